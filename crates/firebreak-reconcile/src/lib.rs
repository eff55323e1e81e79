//! Fireworks' dashboard beside firebreak's own counts, for the same deployments and the same
//! minutes, so that a failure can be placed: on the server's side (the deployment answered an
//! error, and its dashboard shows it) or the client's (the request never got there: DNS,
//! refused or timed-out connects, firebreak's own 429 gate), which no dashboard of Fireworks
//! can show. The page that explains the split is
//! [`firebreak::observe::client_failures`].
//!
//! - [`Scraper`] reads Fireworks' per-deployment metrics exporter
//!   (`GET /v1/accounts/{account}/metrics`) through the firebreak stack, never more than its 6
//!   requests a minute.
//! - [`Exposition`] reads a Prometheus text page (the exporter's, or firebreak's own
//!   `/metrics`) with `prom_text_format_parser`.
//! - [`ServerView`] and [`ClientView`] are the two sides per deployment, and [`Report`] puts
//!   them side by side per window, checks that what firebreak saw answered equals what the
//!   server counted, and ends with a verdict. `firebreak reconcile` is its command line.
//!
//! # The rules
//!
//! - **Answered** is an attempt whose response head reached firebreak, error or not. Fireworks'
//!   exporter counts what its servers answered, so *answered* (firebreak) and
//!   `request_counter_total` (Fireworks) must be equal.
//! - **Sent, not answered** ([`sent_unanswered`]: resets before a response, write and
//!   header timeouts, the attempt or call deadline during the exchange) may or may not have been
//!   counted by the server: a surplus on the server's side up to their number is agreement
//!   ([`Agreement::WithinUnanswered`]).
//! - Anything else is **flagged** ([`Agreement::Differs`], exit status 2 on the command line):
//!   other clients of the deployment, firebreak's and the exporter's minutes not lining up, or
//!   counts lost on one side.
//! - **Never reached** is every attempt with a client-side kind (`dns`, `refused`, `tls`,
//!   `connect_other`, `connect_timeout`, `ready_timeout`, `gate_refused`); the verdict names
//!   them, because no dashboard of Fireworks can.
//! - Both sides' numbers are read as **counters** (totals since their process started), as the
//!   simulator serves the exporter's: a window is the difference of two readings, and a counter
//!   that went down is taken as a restart. If an account's exporter serves per-minute values
//!   instead (its series are "pre-aggregated over 1-minute windows"), compare single readings
//!   taken a minute apart.
//!
//! The exporter covers dedicated deployments only, and firebreak labels a call with its
//! deployment when the model id names one (`{base}#accounts/{a}/deployments/{id}`, see
//! [`firebreak::Model::deployment`]): serverless traffic has nothing to reconcile with.
//!
//! ```
//! use firebreak_reconcile::{ClientView, Exposition, Reading, Report, ServerView};
//!
//! let server = Exposition::parse(
//!     "request_counter_total:sum_by_deployment{deployment=\"accounts/a/deployments/d1\",deployment_account=\"a\"} 3\n",
//! ).unwrap();
//! let client = Exposition::parse(
//!     "firebreak_attempts_total{class=\"success\",reached_server=\"true\",model=\"m#accounts/a/deployments/d1\",deployment=\"accounts/a/deployments/d1\"} 3\n\
//!      firebreak_attempts_total{class=\"timeout_connect\",reached_server=\"false\",model=\"m#accounts/a/deployments/d1\",deployment=\"accounts/a/deployments/d1\"} 2\n",
//! ).unwrap();
//! let reading = Reading {
//!     client: ClientView::from_metrics(&client),
//!     server: ServerView::from_exporter(&server, "a"),
//! };
//! let report = Report::from_readings(&[reading], 0, None);
//! assert!(report.agrees());
//! assert!(report.verdict[0].starts_with("2 failures never reached Fireworks (2 connect timeouts)"));
//! ```

mod exposition;
mod report;
mod scrape;
mod views;

pub use exposition::{Exposition, ParseError, Sample};
pub use report::{Agreement, Reading, Report, Row};
pub use scrape::{
    FIREWORKS_API_URL, MAX_PAGE_BYTES, SCRAPES_PER_MINUTE, ScrapeError, Scraper, fetch,
    scrape_stack,
};
pub use views::{
    ClientCounts, ClientView, LoadJsonError, SERVER_ERRORS, SERVER_REQUESTS, ServerCounts,
    ServerView, sent_unanswered, status_key,
};

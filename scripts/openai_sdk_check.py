"""The official openai SDK, retries off, through `firebreak proxy` in front of a faulty simulator.

Run by crates/firebreak-cli/tests/openai_sdk.rs with FIREBREAK_PROXY set to the proxy's URL.
"""
import os
import sys

import openai

base = os.environ["FIREBREAK_PROXY"] + "/v1"
client = openai.OpenAI(base_url=base, api_key="fw_sdk_key", max_retries=0, timeout=30)
messages = [{"role": "user", "content": "Say hello"}]

r = client.chat.completions.create(model="m", messages=messages, max_tokens=4, user="sdk-json")
assert r.choices[0].message.content == "tok0 tok1 tok2 tok3 ", r
assert r.usage.completion_tokens == 4, r

text = ""
for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=4, stream=True, user="sdk-stream"):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text == "tok0 tok1 tok2 tok3 ", text

wrong = openai.OpenAI(base_url=base, api_key="fw_wrong_key", max_retries=0, timeout=30)
try:
    wrong.chat.completions.create(model="m", messages=messages, max_tokens=4, user="sdk-401")
    sys.exit("expected an AuthenticationError")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e

# A proxy that requires caller tokens, in front of a simulator that hangs the first attempt of
# "...-1" ids and cuts the streams of "...-2" ids mid-way.
import time

auth_base = os.environ["FIREBREAK_PROXY_AUTH"] + "/v1"
tok = openai.OpenAI(base_url=auth_base, api_key="caller-token-123", max_retries=0, timeout=30)
r = tok.chat.completions.create(model="m", messages=messages, max_tokens=4, user="sdk-token")
assert r.choices[0].message.content == "tok0 tok1 tok2 tok3 ", r

stranger = openai.OpenAI(base_url=auth_base, api_key="fw_sdk_key", max_retries=0, timeout=30)
try:
    stranger.chat.completions.create(model="m", messages=messages, max_tokens=4, user="sdk-stranger")
    sys.exit("expected an AuthenticationError without a caller token")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e

# A 3 s SDK timeout, and a first attempt that hangs: the proxy abandons it in time to retry.
quick = openai.OpenAI(base_url=auth_base, api_key="caller-token-123", max_retries=0, timeout=3.0)
for user, stream in [("sdk-hang-1", False), ("sdk-hang-stream-11", True)]:
    t = time.monotonic()
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in quick.chat.completions.create(model="m", messages=messages, max_tokens=4, stream=True, user=user)
            if c.choices
        )
    else:
        text = quick.chat.completions.create(model="m", messages=messages, max_tokens=4, user=user).choices[0].message.content
    took = time.monotonic() - t
    assert text == "tok0 tok1 tok2 tok3 ", (user, text)
    assert took < 3.0, (user, took)

# A stream cut mid-way raises a clear error, not a silently short answer.
text = ""
try:
    for c in tok.chat.completions.create(model="m", messages=messages, max_tokens=20, stream=True, user="sdk-cut-2"):
        if c.choices and c.choices[0].delta.content:
            text += c.choices[0].delta.content
    sys.exit("expected an APIError for a cut stream, got %r" % text)
except openai.APIError as e:
    assert "closed" in str(e).lower() and "upstream" in str(e), e
    assert text.startswith("tok0"), text

print("openai SDK ok")

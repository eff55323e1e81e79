"""The official openai SDK, retries off, asking `firebreak proxy --config` for an alias.

Run by crates/firebreak-cli/tests/openai_sdk.rs with FIREBREAK_PROXY set to the proxy's URL;
the alias "chat" is [a dedicated deployment that is down, a serverless model].
"""
import os

import openai

base = os.environ["FIREBREAK_PROXY"] + "/v1"
client = openai.OpenAI(base_url=base, api_key="caller-key-unused", max_retries=0, timeout=30)
messages = [{"role": "user", "content": "Say hello"}]

for user in ["route-json-1", "route-json-2"]:
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=messages, max_tokens=4, user=user)
    assert raw.headers.get("firebreak-target") == "serverless", dict(raw.headers)
    r = raw.parse()
    assert r.choices[0].message.content == "tok0 tok1 tok2 tok3 ", r
    # The answer names the model that served it, not the alias.
    assert r.model == "accounts/fireworks/models/llama-v3p1-8b-instruct", r.model

raw = client.chat.completions.with_raw_response.create(model="chat", messages=messages, max_tokens=4, stream=True, user="route-stream")
assert raw.headers.get("firebreak-target") == "serverless", dict(raw.headers)
text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
assert text == "tok0 tok1 tok2 tok3 ", text

# A model that is not an alias goes upstream unchanged, with the caller's key, and no header.
plain = openai.OpenAI(base_url=base, api_key="fw_sdk_key", max_retries=0, timeout=30)
raw = plain.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=4, user="route-plain")
assert raw.headers.get("firebreak-target") is None, dict(raw.headers)
assert raw.parse().choices[0].message.content == "tok0 tok1 tok2 tok3 "

print("openai SDK route ok")

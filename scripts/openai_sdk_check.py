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

print("openai SDK ok")

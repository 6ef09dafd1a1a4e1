"""The official OpenAI Python SDK against a running `sluice serve`.

Needs SLUICE_URL (e.g. http://127.0.0.1:8080); SLUICE_API_KEY if the server wants one.
`run.sh` beside this file starts a server on a real model and runs these tests.
"""

import os

import openai
import pytest

BASE = os.environ.get("SLUICE_URL")
pytestmark = pytest.mark.skipif(not BASE, reason="SLUICE_URL is not set (run tests/openai_sdk/run.sh)")


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(
        base_url=BASE.rstrip("/") + "/v1",
        api_key=os.environ.get("SLUICE_API_KEY", "unused"),
        max_retries=0,
        timeout=300,
    )


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def test_models(client, model):
    card = client.models.retrieve(model)
    assert card.id == model
    assert card.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_streamed_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, roles = [], None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            assert c.index == 0
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                text.append(c.delta.content)
            if c.finish_reason is not None:
                assert finish is None, "finish_reason sent twice"
                finish = c.finish_reason
    assert roles == ["assistant"]
    assert "".join(text).strip(), "empty reply"
    assert finish in ("stop", "length")
    assert usage is not None, "no usage chunk"
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_not_streamed_matches_stream(client, model):
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=16,
        temperature=0,
    )
    full = client.chat.completions.create(**kwargs)
    assert full.object == "chat.completion"
    choice = full.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(stream=True, **kwargs)
        if c.choices
    )
    assert streamed == choice.message.content


def test_completion_streamed(client, model):
    stream = client.completions.create(
        model=model,
        prompt="Once upon a time",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text.append(c.text)
            if c.finish_reason is not None:
                finish = c.finish_reason
    assert "".join(text).strip()
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 12 and usage.prompt_tokens > 0
    # The same request not streamed gives the same text (greedy).
    full = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert full.choices[0].text == "".join(text)
    assert full.usage.completion_tokens == 12


def test_errors_surface_as_sdk_exceptions(client, model):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="hi", max_tokens=2, temperature=-1)
    assert e.value.body and e.value.body.get("param") == "temperature"

"""`aiplat chat ENDPOINT "prompt"`: one chat completion from a served endpoint, with the official
openai client (the same way product teams call it)."""

from __future__ import annotations

import click


@click.command()
@click.argument("endpoint")
@click.argument("prompt")
@click.option("--url", default=None, help="Base URL of an endpoint outside the local registry (prod gateway).")
@click.option("--api-key", envvar="AIPLAT_VLLM_API_KEY", default="not-needed-locally", show_default=False,
              help="Bearer token (prod); read from AIPLAT_VLLM_API_KEY.")
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--system", default=None, help="A system message.")
def cli(endpoint: str, prompt: str, url: str | None, api_key: str, max_tokens: int, temperature: float,
        system: str | None) -> None:
    """Ask ENDPOINT (a name from `aiplat endpoints list`) one question."""
    import openai

    from aiplat.serving.manager import EndpointManager, EndpointNotFound

    if url:
        base, model = url.rstrip("/"), endpoint
    else:
        try:
            live = EndpointManager().get(endpoint).live
        except EndpointNotFound as e:
            raise click.ClickException(str(e).strip("'\"")) from e
        base, model = live.url, live.served_model_name
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=300)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=temperature)
    except openai.APIStatusError as e:
        raise click.ClickException(f"{endpoint} answered HTTP {e.status_code}: {e.message}") from e
    except openai.APIConnectionError as e:
        raise click.ClickException(f"{endpoint} is unreachable at {base}: {e}") from e
    click.echo(answer.choices[0].message.content)

"""`aiplat chat ENDPOINT "prompt"`: one chat completion from a served endpoint, with the official
openai client (the same way product teams call it), through the metering gateway so that the
request is labelled with a team and a feature and lands in the request log like any other."""

from __future__ import annotations

import click

DEFAULT_FEATURE = "cli-chat"


@click.command()
@click.argument("endpoint")
@click.argument("prompt")
@click.option("--url", default=None, help="Base URL of a gateway other than the local one (prod), without /v1.")
@click.option("--api-key", envvar="AIPLAT_VLLM_API_KEY", default="not-needed-locally", show_default=False,
              help="Bearer token (prod); read from AIPLAT_VLLM_API_KEY.")
@click.option("--team", default=None, help="Team billed for the request. Default: AIPLAT_TEAM.")
@click.option("--feature", default=DEFAULT_FEATURE, show_default=True, help="Feature billed for the request.")
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--system", default=None, help="A system message.")
def cli(endpoint: str, prompt: str, url: str | None, api_key: str, team: str | None, feature: str, max_tokens: int,
        temperature: float, system: str | None) -> None:
    """Ask ENDPOINT (a name from `aiplat endpoints list`) one question."""
    import openai

    from aiplat.config import local_ports, team_from_env
    from aiplat.security.identity import normalize_team
    from aiplat.operations.requests import HEADER_FEATURE, HEADER_TEAM

    from aiplat.commands import _resources

    if not url and _resources.runtime() == "prod":
        # The runtime's gateway (AIPLAT_VLLM_GATEWAY_URL); never a local one in prod.
        url = _resources.runtime_resource("vllm").gateway_url
    if not url:
        # A typo is named here, not blamed on a gateway that is not running.
        from aiplat.serving.adapter_routes import AdapterRoutes

        routed = AdapterRoutes().all()  # what the local gateway routes
        if endpoint not in routed:
            raise click.ClickException(f"no live endpoint named {endpoint!r} (endpoints: {', '.join(sorted(routed)) or 'none'})")
    base = url.rstrip("/") if url else f"http://127.0.0.1:{local_ports().gateway}"
    # Attribution through the local gateway's X-AIPLAT-Team header (trusted locally only); it grants nothing.
    team = normalize_team(team or team_from_env())
    headers = {HEADER_FEATURE: feature, **({HEADER_TEAM: team} if team else {})}
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=300, default_headers=headers)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        answer = client.chat.completions.create(model=endpoint, messages=messages, max_tokens=max_tokens,
                                                temperature=temperature)
    except openai.APIStatusError as e:
        raise click.ClickException(f"{endpoint} answered HTTP {e.status_code}: {e.message}") from e
    except openai.APITimeoutError as e:
        raise click.ClickException(f"{endpoint} did not answer within 300 s through {base}") from e
    except openai.APIConnectionError as e:
        hint = "" if url else "; start it with `aiplat stack up gateway`"
        raise click.ClickException(f"no gateway answers at {base}{hint} ({e})") from e
    click.echo(answer.choices[0].message.content)

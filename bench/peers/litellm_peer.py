"""Runs inside `bench/.venv-peers`: LiteLLM's Router (and proxy) against the fake.

Every figure is taken in alternating slices with a direct `openai` SDK call
from this same interpreter (`bench.loadgen`, found through PYTHONPATH),
so LiteLLM's added latency is measured against a baseline that shares its
process and its moment. Prints one JSON object: figure -> [direct, through].

Usage: python litellm_peer.py BASE_URL MODEL CONCURRENCY [PROXY_URL]
(the proxy's key comes from LITELLM_MASTER_KEY).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import litellm
from openai import AsyncOpenAI

from bench.loadgen import alternate
from bench.sdk_calls import MESSAGES, Calls, sdk_calls

ROUTE = "chat"


def router_calls(router: Any) -> Calls:
    async def plain() -> None:
        await router.acompletion(model=ROUTE, messages=MESSAGES)

    async def streamed() -> None:
        response = await router.acompletion(model=ROUTE, messages=MESSAGES, stream=True)
        async for _ in response:
            pass

    return plain, streamed


async def figures(
    side: str, direct: Calls, through: Calls, concurrency: int
) -> dict[str, list[dict[str, float]]]:
    results = {}
    for mode, in_flight in (("serial", 1), ("loaded", concurrency)):
        for kind, index in (("plain", 0), ("streamed", 1)):
            pair = await alternate(
                {"direct": direct[index], "through": through[index]},
                concurrency=in_flight,
            )
            results[f"{side}_{kind}_{mode}"] = [
                pair["direct"].summary(),
                pair["through"].summary(),
            ]
    return results


async def main(base_url: str, model: str, concurrency: int, proxy_url: str) -> None:
    litellm.suppress_debug_info = True
    direct = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    router = litellm.Router(
        model_list=[
            {
                "model_name": ROUTE,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": base_url,
                    "api_key": "bench",
                },
            }
        ],
        num_retries=0,
    )
    baseline = sdk_calls(direct, model)
    results = await figures("router", baseline, router_calls(router), concurrency)
    if proxy_url:
        key = os.environ["LITELLM_MASTER_KEY"]
        proxy = AsyncOpenAI(base_url=proxy_url, api_key=key, max_retries=0)
        results |= await figures(
            "proxy", baseline, sdk_calls(proxy, ROUTE), concurrency
        )
        await proxy.close()
    await direct.close()
    print(json.dumps(results))


if __name__ == "__main__":
    arguments = sys.argv[1:] + [""] * (4 - len(sys.argv[1:]))
    asyncio.run(main(arguments[0], arguments[1], int(arguments[2]), arguments[3]))

"""Cost that grows with new data, not history (issue 16 item 3): the downstream run after one new
batch lands, when 1 vs 10 batches were already there, in one process (ratios, same run).

The run is the feature group as the platform defines it (`customer_features`, `ticket_features`,
`feature_registry`, `online_features`, with their checks) through dagster.materialize against a
real lake and a real Feast store (SQLite online store). Redacted batches stand in for the pii
stage's output (its redaction of a batch costs the same whatever the history: it is per partition).
For each history size H the script materializes H batches and the features, lands one more batch,
and times (a) the incremental run and (b) the same run with `full_rebuild: true` on a copy of that
state (the previous behaviour: every batch read and recomputed). Usage:

    .venv/bin/python benchmarks/incremental_features.py [--tickets-per-batch 2000] [--customers 3000]

Prints seconds per run and the ratios: incremental(H=10) / incremental(H=1) (goal: close to 1)
and full(H=10) / incremental(H=10).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets-per-batch", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--histories", default="1,10")
    args = parser.parse_args()

    import dagster as dg
    import pandas as pd

    from aiplat.features import sample
    from assets import features as fa
    from assets.intake import TICKET_BATCHES
    from resources.feast import LocalFeastResource
    from resources.lake import LakeIOManager

    group = [*fa.feature_assets, *fa.feature_checks]
    selection = [a.key for a in fa.feature_assets]

    def batch(n: int) -> pd.DataFrame:
        frame = sample.redacted_tickets(args.tickets_per_batch, args.customers, seed=n, span_days=30)
        frame["ticket_id"] = [f"B{n:03d}-{i:06d}" for i in range(len(frame))]
        frame["_batch"] = f"b{n:03d}"
        return frame

    def upstream(frames: dict[str, pd.DataFrame]) -> dg.AssetsDefinition:
        @dg.asset(key=["redacted_tickets"], io_manager_key="lake", partitions_def=TICKET_BATCHES)
        def redacted_tickets(context):
            return frames[context.partition_key]

        return redacted_tickets

    def resources(state: Path) -> dict:
        return {"feast": LocalFeastResource(data_dir=str(state / "feast")), "lake": LakeIOManager(base_uri=str(state / "lake"))}

    def land(frames: dict[str, pd.DataFrame], instance, state: Path) -> None:
        instance.add_dynamic_partitions(TICKET_BATCHES.name, list(frames))
        for key in frames:
            dg.materialize([upstream(frames)], partition_key=key, instance=instance, resources=resources(state))

    def features(instance, state: Path, rebuild: bool) -> float:
        config = {"ops": {v: {"config": {"full_rebuild": rebuild}} for v in ("customer_features", "ticket_features")}}
        started = time.perf_counter()
        result = dg.materialize([upstream({}), *group], selection=selection, instance=instance,
                                resources=resources(state), run_config=config)
        seconds = time.perf_counter() - started
        assert result.success
        modes = {e.event_specific_data.materialization.metadata["mode"].value
                 for e in result.get_asset_materialization_events()
                 if "mode" in e.event_specific_data.materialization.metadata}
        assert modes == {"full rebuild" if rebuild else "incremental"}, modes
        return seconds

    figures: dict[int, dict[str, float]] = {}
    root = Path(tempfile.mkdtemp(prefix="aiplat-bench-incremental-"))
    try:
        for history in (int(h) for h in args.histories.split(",")):
            state, home = root / f"h{history}" / "state", root / f"h{history}" / "home"
            home.mkdir(parents=True)
            with dg.DagsterInstance.local_temp(str(home)) as instance:
                land({f"b{n:03d}": batch(n) for n in range(history)}, instance, state)
                features(instance, state, rebuild=True)  # the tables as they stand before the new batch
                land({f"b{history:03d}": batch(history)}, instance, state)
                # The full rebuild runs on a copy of the state and instance, so both runs start alike.
                copy = root / f"h{history}" / "copy"
                shutil.copytree(root / f"h{history}" / "state", copy / "state")
                shutil.copytree(home, copy / "home")
                incremental = features(instance, state, rebuild=False)
            with dg.DagsterInstance.local_temp(str(copy / "home")) as instance:
                full = features(instance, copy / "state", rebuild=True)
            figures[history] = {"incremental": incremental, "full": full}
            print(f"history {history:>2} batches of {args.tickets_per_batch} tickets + 1 new: "
                  f"incremental {incremental:6.2f} s, full rebuild {full:6.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    hs = sorted(figures)
    if len(hs) >= 2:
        low, high = figures[hs[0]], figures[hs[-1]]
        print(f"incremental, history {hs[-1]} vs {hs[0]}: {high['incremental'] / low['incremental']:.2f}x "
              f"(full rebuild: {high['full'] / low['full']:.2f}x)")
        print(f"history {hs[-1]}: full rebuild / incremental = {high['full'] / high['incremental']:.2f}x")


if __name__ == "__main__":
    main()

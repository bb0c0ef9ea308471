"""`audiocurate run|demo|report|export|config`: the command line over `pipeline.run`."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from typing import Optional

from . import __version__
from .config import PipelineConfig

DEMO_DATASET = "demo/demo.parquet"


def demo_dataset_path() -> str:
    return str(resources.files("audiocurate") / DEMO_DATASET)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file (see `audiocurate config`)")
    p.add_argument("--profile", default=None, help="start from a shipped profile: default, gpu, longform")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set asr.beam_size=5 (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="process only the first N rows (same rows every run)")
    p.add_argument("--min-score", type=int, default=None, help="keep clips with edu_score >= S (default 3)")
    p.add_argument("--address", default=None, help="Ray cluster to join (else RAY_ADDRESS, else local Ray)")
    p.add_argument("--restart", action="store_true", help="delete an existing OUTPUT of another run and start over")
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiocurate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"audiocurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="curate INPUT into OUTPUT (resumes an unfinished OUTPUT)")
    run.add_argument("input", help="Parquet file/folder/glob, or a folder of audio files; local, s3:// or gs://")
    run.add_argument("output", help="output folder, local or s3:// / gs://")
    _add_run_options(run)
    demo = sub.add_parser("demo", help="run the pipeline on the sample dataset shipped with the package")
    demo.add_argument("output", nargs="?", default="audiocurate-demo", help="output folder (default ./audiocurate-demo)")
    _add_run_options(demo)
    rep = sub.add_parser("report", help="rebuild OUTPUT/report.json and report.html from the output files")
    rep.add_argument("output")
    exp = sub.add_parser("export", help="write OUTPUT's curated clips in a training format: nemo, webdataset, "
                         "lhotse, hf (resumable: a rerun completes an interrupted export)")
    exp.add_argument("output", help="an audiocurate output folder, local or s3:// / gs://")
    exp.add_argument("format", choices=["nemo", "webdataset", "lhotse", "hf"])
    exp.add_argument("dest", help="destination folder, local or s3:// / gs://")
    exp.add_argument("--from", dest="split", choices=["curated", "rejected"], default="curated",
                     help="which rows (rejected clips are read back from the run's input)")
    exp.add_argument("--shard-size", type=int, default=1000, help="clips per tar shard (webdataset, nemo --tarred)")
    exp.add_argument("--tarred", type=int, default=None, metavar="N",
                     help="nemo: NeMo's tarred layout, N clips per audio_K.tar")
    exp.add_argument("--input", default=None, help="with --from rejected: the run's input, if it moved")
    comp = sub.add_parser("compact", help="merge OUTPUT's small shards into files of about --target-mb "
                          "(same rows; resume and report unchanged; run it when no run writes to OUTPUT)")
    comp.add_argument("output", help="an audiocurate output folder (local)")
    comp.add_argument("--target-mb", type=float, default=256.0, help="size of the merged files (default 256)")
    cfg = sub.add_parser("config", help="print the effective configuration as YAML")
    _add_run_options(cfg)
    return parser


def load_config(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if args.min_score is not None:
        overrides.append(f"select.min_score={args.min_score}")
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.no_progress:
        overrides.append("ray.progress=false")
    return PipelineConfig.load(args.config, profile=args.profile, overrides=overrides)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args.output)
        if args.command == "export":
            return _export(args)
        if args.command == "compact":
            return _compact(args)
        config = load_config(args)
        if args.command == "config":
            print(config.to_yaml(), end="")
            return 0
        from .pipeline import run
        from .report import format_summary
        from .terminal import harmless_native_lines_held_back

        input_uri = demo_dataset_path() if args.command == "demo" else args.input
        with harmless_native_lines_held_back():
            report = run(config, input_uri, args.output, limit=args.limit, restart=args.restart, stop_ray=True)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"audiocurate: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(report))
    where = args.output.rstrip("/")
    print(f"\n  curated clips in {where}/curated/, report in {where}/report.html")
    return 0 if report["accounting"]["ok"] else 1


def _export(args: argparse.Namespace) -> int:
    from .exports import ExportOptions, export

    options = ExportOptions(shard_size=args.tarred or args.shard_size, tarred=args.tarred is not None)
    summary = export(args.output, args.format, args.dest, split=args.split, options=options, input_uri=args.input)
    print(f"  exported {summary['clips']:,} clips in {summary['shards']} shards to {summary['dest']} "
          f"({summary['exported_now']} shards written now, {summary['wall_s']:.1f} s)")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from .compaction import compact, summary
    from .sinks import OutputDir

    out = OutputDir(args.output)
    if out.identity() is None:
        print(f"audiocurate: error: {args.output} holds no audiocurate run", file=sys.stderr)
        return 2
    print(summary(compact(out, args.target_mb)))
    return 0


def _report(output: str) -> int:
    import yaml

    from .report import build_report, format_summary, write_report
    from .sinks import OutputDir

    out = OutputDir(output)
    identity = out.identity()
    if identity is None:
        print(f"audiocurate: error: {output} holds no audiocurate run", file=sys.stderr)
        return 2
    raw = out.read_bytes(out.path("_state", "config.yaml"))
    config = PipelineConfig.model_validate(yaml.safe_load(raw)) if raw else PipelineConfig()
    attempts = out.attempts()
    last = attempts[-1] if attempts else {}
    keep = None
    if last.get("limit") is not None:
        from .sources import open_source

        keep, _ = open_source(identity["input"], config.source).first_ids(last["limit"])
    report = build_report(out, config, input_rows=last.get("input_rows", 0), keep_ids=keep,
                          id_column=config.source.id_column, input_uri=identity.get("input", ""))
    write_report(out, report, config)
    print(format_summary(report))
    print(f"\n  report in {output.rstrip('/')}/report.html")
    return 0 if report["accounting"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

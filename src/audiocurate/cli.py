"""`audiocurate run|demo|report|export|compact|verify|refilter|config`: the command line over `pipeline.run`.

Exit codes (docs/resume-and-failures.md): 0 done and exact; 1 accounting mismatch; 2 a user
error; 3 an engine or machine fault stopped the run; 4 another live run holds OUTPUT;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from importlib import resources
from typing import TYPE_CHECKING, Optional

from . import __version__
from .config import PipelineConfig
from .exports import EXPORT_FORMATS

if TYPE_CHECKING:
    from .run_output import RunOutput

DEMO_DATASET = "demo/demo.parquet"


def demo_dataset_path() -> str:
    return str(resources.files("audiocurate") / DEMO_DATASET)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file (see `audiocurate config`)")
    p.add_argument("--profile", default=None, help="start from shipped profiles: default, gpu, longform, multilingual, quality; comma-separated ones are "
                   "layered in order (e.g. longform,quality)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set asr.beam_size=5 (repeatable)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="process only the first N rows (same rows every run; N >= 1)")
    p.add_argument("--min-score", type=int, default=None, help="keep clips with edu_score >= S (default 3)")
    p.add_argument("--address", default=None, help="Ray cluster to join (else RAY_ADDRESS, else local Ray)")
    p.add_argument("--restart", action="store_true", help="delete an existing OUTPUT of another run and start over")
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n})")
    return n


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    """For commands on an existing OUTPUT: how to reach it (the run's own settings are read
    from it once reached)."""
    p.add_argument("--config", help="YAML configuration whose output.storage reaches OUTPUT (e.g. the run's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set output.storage.endpoint_url=http://127.0.0.1:9000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiocurate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"audiocurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="curate INPUT into OUTPUT (resumes an unfinished OUTPUT)")
    run.add_argument("input", help="Parquet file/folder/glob, or a folder of audio files; local, s3:// or gs://")
    run.add_argument("output", help="output folder, local or s3:// / gs://")
    run.add_argument("--retry-errors", action="store_true",
                     help="process again the rows in OUTPUT/errors/ that an engine stage (transcribe, judge) failed")
    _add_run_options(run)
    demo = sub.add_parser("demo", help="run the pipeline on the sample dataset shipped with the package")
    demo.add_argument("output", nargs="?", default="audiocurate-demo", help="output folder (default ./audiocurate-demo)")
    _add_run_options(demo)
    rep = sub.add_parser("report", help="rebuild OUTPUT/report.json and report.html from the output files")
    rep.add_argument("output")
    _add_storage_options(rep)
    formats = EXPORT_FORMATS.declared()
    exp = sub.add_parser("export", help=f"write OUTPUT's curated clips in a training format: {', '.join(formats)} "
                         "(resumable: a rerun completes an interrupted export)")
    exp.add_argument("output", help="an audiocurate output folder, local or s3:// / gs://")
    exp.add_argument("format", choices=formats)
    exp.add_argument("dest", help="destination folder, local or s3:// / gs://")
    exp.add_argument("--from", dest="split", choices=["curated", "rejected"], default="curated",
                     help="which rows (rejected clips are read back from the run's input)")
    exp.add_argument("--shard-size", type=int, default=1000, help="clips per tar shard (webdataset, nemo --tarred)")
    exp.add_argument("--tarred", type=int, default=None, metavar="N",
                     help="nemo: NeMo's tarred layout, N clips per audio_K.tar")
    exp.add_argument("--input", default=None, help="with --from rejected: the run's input, if it moved")
    _add_storage_options(exp)
    comp = sub.add_parser("compact", help="merge OUTPUT's small shards into files of about --target-mb "
                          "(same rows; resume and report unchanged; run it when no run writes to OUTPUT)")
    comp.add_argument("output", help="an audiocurate output folder (local)")
    comp.add_argument("--target-mb", type=float, default=256.0, help="size of the merged files (default 256)")
    _add_storage_options(comp)
    ver = sub.add_parser("verify", help="check that OUTPUT accounts for every input row exactly once "
                         "(exit 0 if so, 1 if not); --repair removes duplicated rows")
    ver.add_argument("output", help="an audiocurate output folder, local or s3:// / gs://")
    ver.add_argument("--repair", action="store_true",
                     help="remove rows whose id is there twice (keeps the first: curated, rejected, errors)")
    _add_storage_options(ver)
    ref = sub.add_parser("refilter", help="route OUTPUT's rows again under new gates into DEST, from the signals "
                         "the run stored, with no model loaded (resumes an unfinished DEST)")
    ref.add_argument("output", help="a finished audiocurate output, local or s3:// / gs://")
    ref.add_argument("dest", help="the new output folder, local or s3:// / gs://")
    ref.add_argument("--profile", default=None, help="profiles layered over OUTPUT's recorded configuration")
    ref.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting of OUTPUT's configuration, e.g. --set filters.dnsmos.min_ovrl=3.2")
    ref.add_argument("--min-score", type=int, default=None, help="keep clips with edu_score >= S")
    ref.add_argument("--address", default=None, help="Ray cluster to join (else RAY_ADDRESS, else local Ray)")
    ref.add_argument("--restart", action="store_true", help="delete an existing DEST of another refilter and start over")
    ref.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")
    cfg = sub.add_parser("config", help="print the effective configuration as YAML, each field under its description")
    _add_run_options(cfg)
    return parser


def load_config(args: argparse.Namespace) -> PipelineConfig:
    overrides = _flag_overrides(args)
    if args.config:
        _check_config_file(args.config)
    return PipelineConfig.load(args.config, profile=getattr(args, "profile", None), overrides=overrides)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` and the flags that stand for a setting, as overrides."""
    overrides = list(args.overrides)
    if getattr(args, "min_score", None) is not None:
        overrides.append(f"select.min_score={args.min_score}")
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    if getattr(args, "no_progress", False):
        overrides.append("ray.progress=false")
    return overrides


def _check_config_file(path: str) -> None:
    """A YAML file that does not parse, or is not a mapping of sections, is one line."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"--config {path}: not valid YAML{at}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of sections (asr:, judge:, ...), "
                         f"found a {type(data).__name__}")


class _Exit(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _on_sigterm(signum: int, frame: object) -> None:
    from .pipeline import RunInterrupted

    raise RunInterrupted(signum)


# Ray's notes that are no news to a user of this command line: restart and retry limits have no
# named parameter in Ray 2.60 (plan.actor_stage_args), and a small input cannot keep every planned
# actor (or a task per core of decode) busy. Silenced by the CLI, which owns the process; a
# library caller sees them.
_NO_NEWS = (".*ray_remote_args.*is deprecated", "The minimum number of concurrent actors",
            "The maximum number of concurrent tasks")


def main(argv: Optional[list[str]] = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        from .runtime import log_records_held_back

        # `--no-progress` asked for it: Ray's WARNING that progress bars are off is no news either
        with warnings.catch_warnings(), log_records_held_back("ray.data._internal.progress", "Progress bars disabled"):
            for message in _NO_NEWS:
                warnings.filterwarnings("ignore", message=message)
            return _dispatch(args)
    except _Exit as e:
        print(f"audiocurate: {e}", file=sys.stderr)
        _stop_own_ray()  # now, not in Ray's exit hook, which races a cut-off dataset (`runtime.shutdown_ray`)
        return e.code
    except KeyboardInterrupt:
        _stop_ray()
        print("\naudiocurate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BaseException as e:
        from .pipeline import RunInterrupted

        if not isinstance(e, RunInterrupted):
            raise
        _stop_ray()
        print("audiocurate: terminated (SIGTERM); run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop_ray() -> None:
    with contextlib.suppress(Exception):
        import ray

        from .runtime import shutdown_ray

        if ray.is_initialized():
            shutdown_ray()


def _stop_own_ray() -> None:
    from .runtime import stop_own_ray

    stopping = stop_own_ray()
    if stopping is not None:
        stopping.join()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("report", "export", "compact", "verify"):
        with _exit_codes_of_a_run(args.output):
            return _on_output(args)
    if args.command == "refilter":
        with _exit_codes_of_a_run(args.dest):
            report = _refilter(args)
        return _finish(report, args.dest)
    with _exit_codes_of_a_run(getattr(args, "output", "")):
        config = load_config(args)
        if args.command == "config":
            from .core.settings import documented_yaml

            print(documented_yaml(config), end="")
            return 0
        from .pipeline import run
        from .terminal import harmless_native_lines_held_back

        input_uri = demo_dataset_path() if args.command == "demo" else args.input
        with harmless_native_lines_held_back():
            report = run(config, input_uri, args.output, limit=args.limit, restart=args.restart,
                         retry_errors=getattr(args, "retry_errors", False), stop_ray=True)
    return _finish(report, args.output)


@contextlib.contextmanager
def _exit_codes_of_a_run(output: str):
    """A run's (or refilter's) errors as exit codes: 4 busy, 3 failed, 2 the user's, storage by kind."""
    from .lease import OutputBusyError
    from .pipeline import RunFailed

    try:
        yield
    except OutputBusyError as e:
        raise _Exit(4, f"error: {e}") from None
    except RunFailed as e:
        raise _Exit(3, f"error: {e}") from None
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise _Exit(2, f"error: {e}") from None
    except OSError as e:
        raise _storage_exit(e, output) from None


def _finish(report: dict, output: str) -> int:
    from .report import format_summary

    print(format_summary(report))
    where = output.rstrip("/")
    if not report["accounting"]["ok"]:
        print(f"\naudiocurate: accounting MISMATCH: {where} is not exact and is not marked complete; "
              f"see `audiocurate verify {where}`, repair with `audiocurate verify {where} --repair`, "
              "then run the same command again", file=sys.stderr)
        return 1
    print(f"\n  curated clips in {where}/curated/, report in {where}/report.html")
    return 0


def _refilter(args: argparse.Namespace) -> dict:
    """OUTPUT's recorded configuration with the command's layers, then `corpus.refilter`."""
    from .corpus.refilter import new_config, refilter
    from .run_output import RunOutput
    from .terminal import harmless_native_lines_held_back

    recorded = RunOutput.open(args.output).config
    config = new_config(recorded, args.profile, _flag_overrides(args))
    with harmless_native_lines_held_back():
        return refilter(config, args.output, args.dest, restart=args.restart, stop_ray=True)


def _on_output(args: argparse.Namespace) -> int:
    """The subcommands that work on an existing OUTPUT (their errors: `_dispatch`'s exit codes)."""
    from .lease import OutputBusyError, OutputLease, describe_holder
    from .run_output import RunOutput

    storage = load_config(args).output.storage if (args.config or args.overrides) else None
    run = RunOutput.open(args.output, storage)
    command = {"report": _report, "export": _export, "compact": _compact, "verify": _verify}[args.command]
    lease = OutputLease(run.out, args.command)
    if args.command == "export" or (args.command == "verify" and not args.repair):
        # they only read OUTPUT (it may be read-only to them): refused while a run writes it
        holder = lease.holder()
        if holder is not None and not lease.is_stale(holder):
            raise OutputBusyError(f"{run.uri} is in use by {describe_holder(holder)}; "
                                  "wait for it to finish, then run this again")
        return command(run, args)
    with lease:
        return command(run, args)


# OSErrors that say the user's OUTPUT cannot be written (read-only, not a folder, no permission):
# exit 2. Any other (a full disk, a reset connection) is the machine's or the store's: exit 3.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def _storage_exit(e: OSError, output: str) -> "_Exit":
    if e.errno in _USER_ERRNOS:
        return _Exit(2, f"error: cannot write {output}: {e.strerror or os.strerror(e.errno)}")
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return _Exit(3, f"error: storage: {text}; what was written is kept: run the same command again to resume")


def _export(run: "RunOutput", args: argparse.Namespace) -> int:
    from .exports import ExportOptions
    from .exports.run import export

    options = ExportOptions(shard_size=args.tarred or args.shard_size, tarred=args.tarred is not None)
    summary = export(run.uri, args.format, args.dest, split=args.split, options=options, input_uri=args.input,
                     storage=run.config.output.storage, ray_config=run.config.ray)
    print(f"  exported {summary['clips']:,} clips in {summary['shards']} shards to {summary['dest']} "
          f"({summary['exported_now']} shards written now, {summary['wall_s']:.1f} s)")
    return 0


def _compact(run: "RunOutput", args: argparse.Namespace) -> int:
    from .compaction import compact, summary

    print(summary(compact(run.out, args.target_mb, run.config.ray)))
    return 0


def _verify(run: "RunOutput", args: argparse.Namespace) -> int:
    from .verify import remove_duplicates, verify

    source = run.source()
    if args.repair:
        removed = remove_duplicates(run.out, source, run.id_column)
        print(f"  repair           removed {removed:,} duplicated rows")
    verdict = verify(run.out, source, run.id_column, run.limit)
    print("\n".join(verdict.lines()))
    if verdict.ok and not verdict.marked_complete:
        print("  run the same `audiocurate run` command again to finish and mark it complete")
    if not verdict.ok and verdict.marked_complete:
        run.state.unmark_complete()  # _SUCCESS exists only while the output is exact
        print("  removed _SUCCESS: the output is not exact")
    return 0 if verdict.ok else 1


def _report(run: "RunOutput", args: argparse.Namespace) -> int:
    from .report import build_report, format_summary, write_report

    keep = None
    limit = run.limit
    if limit is not None:
        keep, _ = run.source().first_ids(limit)
    report = build_report(run.out, run.config, input_rows=run.last_attempt.get("input_rows", 0), keep_ids=keep,
                          id_column=run.id_column, input_uri=run.input_uri)
    write_report(run.out, report, run.config)
    print(format_summary(report))
    print(f"\n  report in {run.uri.rstrip('/')}/report.html")
    return 0 if report["accounting"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

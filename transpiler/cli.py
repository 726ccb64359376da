"""The ``jaxport`` command line. Thin: parse arguments, call the library, print, exit.

Exit codes: 0 clean; 1 some file has error diagnostics or ``--check`` found changes;
2 usage error or internal error. A traceback reaches the user only with ``-v``.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import click

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("jaxport")
    except Exception:
        return "0+unknown"


def _fail_internal(exc: BaseException, verbose: bool) -> "None":
    click.echo(f"jaxport: internal error: {type(exc).__name__}: {exc}", err=True)
    if verbose:
        import traceback
        click.echo(traceback.format_exc(), err=True, nl=False)
    else:
        click.echo("(run again with -v for the traceback, and please report it)", err=True)
    sys.exit(EXIT_USAGE)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``, looked up only when asked for (importlib.metadata is slow to import)."""
    if value and not ctx.resilient_parsing:
        click.echo(f"jaxport, version {_version()}")
        ctx.exit()


@click.group(context_settings=CONTEXT)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli() -> None:
    """jaxport: convert PyTorch code to JAX (flax.linen, optax) and check the result."""


# --------------------------------------------------------------------------- convert

def _styled_diff(lines: list[str], color: bool) -> str:
    if not color:
        return "".join(lines)
    styles = (("+++", {"bold": True}), ("---", {"bold": True}), ("@@", {"fg": "cyan"}),
              ("+", {"fg": "green"}), ("-", {"fg": "red"}))
    out = []
    for line in lines:
        body, nl = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        style = next((s for prefix, s in styles if body.startswith(prefix)), None)
        out.append((click.style(body, **style) if style else body) + nl)
    return "".join(out)


def unified_diff(record) -> list[str]:
    old = (record.original_text or "").splitlines(keepends=True)
    new = (record.output_text or "").splitlines(keepends=True)
    import difflib
    lines = list(difflib.unified_diff(old, new, f"a/{record.path}", f"b/{record.path}"))
    return [l if l.endswith("\n") else l + "\n\\ No newline at end of file\n" for l in lines]


class _Progress:
    """A rich progress bar with ETA on a terminal; nothing otherwise. The bar (and rich's
    refresh thread) starts at the first finished file, after the workers have started: a
    process with no other thread may fork them (transpiler/tree.py)."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.task = None
        self.started = False
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:
            self.bar.__exit__(*exc)

    def __call__(self, done: int, total: int, record) -> None:
        if self.bar is None:
            return
        if not self.started:
            self.started = True
            self.bar.__enter__()
        if self.task is None:
            self.task = self.bar.add_task("convert", total=total)
        self.bar.update(self.task, completed=done)


def _print_diagnostics(run, verbose: bool, quiet: bool) -> None:
    shown = ("error",) if quiet else ("error", "warning", "info") if verbose else ("error", "warning")
    colors = {"error": "red", "warning": "yellow", "info": "blue"}
    for r in run.records:
        for d in r.diagnostics:
            if d.severity in shown:
                loc = f"{r.display}:{d.line}:{d.col}:"
                click.echo(f"{click.style(loc, bold=True)} "
                           f"{click.style(d.code, fg=colors.get(d.severity), bold=True)} {d.message}",
                           err=True)
        if verbose and r.result.traceback:
            click.echo(r.result.traceback.rstrip("\n"), err=True)
    if verbose:
        for note in run.notes:
            click.echo(f"note: {note}", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True,
                type=click.Path(exists=True, allow_dash=True))
@click.option("-o", "--output", "out", metavar="OUT", type=click.Path(),
              help="Output directory (or FILE.py for a single input file). Required unless "
                   "PATH is '-' or --check is given.")
@click.option("--diff", is_flag=True, help="Print a unified diff of every changed file on stdout.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if any file would change.")
@click.option("--report", "reports", metavar="FILE.{json,md,html}", multiple=True,
              type=click.Path(dir_okay=False), help="Write a report; the format follows the suffix.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes (default: all cores).")
@click.option("--parallel", type=click.Choice(["pmap", "sharding"]), default=None,
              help="How data parallelism (DDP) is converted  [default: pmap, or the config's].")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None,
              help="Image layout of converted models' interfaces  [default: nchw, or the config's].")
@click.option("--exclude", "excludes", metavar="GLOB", multiple=True,
              help="Copy matching paths as they are instead of converting them; repeatable. "
                   "Replaces the config's exclude list.")
@click.option("--in-place", is_flag=True,
              help="Rewrite the input files themselves (no -o), keeping each original as "
                   "FILE.torch.bak.")
@click.option("-q", "--quiet", is_flag=True, help="Print only error diagnostics, no summary.")
@click.option("-v", "--verbose", is_flag=True, help="Print every diagnostic, notes and tracebacks.")
def convert(paths: tuple[str, ...], out: str | None, diff: bool, check: bool,
            reports: tuple[str, ...], jobs: int | None, parallel: str | None, layout: str | None,
            excludes: tuple[str, ...], in_place: bool, quiet: bool, verbose: bool) -> None:
    """Convert PyTorch files and directories into OUT.

    Every .py file and the code cells of every .ipynb notebook are converted, every other
    file copied byte for byte; the inputs are never modified (unless --in-place). PATH '-'
    reads standard input and writes the result to standard output. Settings may also come
    from [tool.jaxport] in each input directory's pyproject.toml; flags win.
    """
    from .report import report_format
    if quiet and verbose:
        raise click.UsageError("-q and -v cannot be used together")
    for rep in reports:
        if report_format(rep) is None:
            raise click.BadParameter(f"{rep!r}: the report's suffix must be .json, .md or .html",
                                     param_hint="'--report'")
    try:
        code = _convert(list(paths), out, diff, check, reports, jobs, parallel, layout, quiet,
                        verbose, excludes, in_place)
    except (click.ClickException, BrokenPipeError):
        raise   # click reports these itself (usage errors exit 2)
    except Exception as exc:
        _fail_internal(exc, verbose)
    sys.exit(code)


def _convert(paths, out, diff, check, reports, jobs, parallel, layout, quiet, verbose,
             excludes=(), in_place=False) -> int:
    from . import report as rep
    from .api import Options
    from .config import Settings
    from .tree import STDIN, TreeError, convert_tree, input_containing

    stdin_mode = paths == [STDIN]
    if in_place and (stdin_mode or out is not None or check):
        raise click.UsageError("--in-place rewrites the input files themselves: it cannot be "
                               "used with '-', -o or --check")
    if not stdin_mode and out is None and not check and not in_place:
        raise click.UsageError("missing option '-o' / '--output' (where to write the converted tree)")
    if stdin_mode and out is not None:
        raise click.UsageError("'-' writes to standard output: drop -o")
    for path in reports:
        holder = input_containing(path, paths)
        if holder is not None:
            raise click.UsageError(f"report {path} would be written into the input {holder}: "
                                   "jaxport never writes into its input")
    keep_text = diff or any(rep.report_format(r) == "html" for r in reports)
    overrides = Settings(parallel=parallel, layout=layout, exclude=tuple(excludes) or None)
    started = time.monotonic()
    progress = _Progress(enabled=not quiet and not stdin_mode and sys.stderr.isatty())
    try:
        with progress:
            run = convert_tree(paths, out, Options(), jobs, progress, check=check,
                               keep_text=keep_text, overrides=overrides, in_place=in_place)
    except TreeError as exc:
        raise click.UsageError(str(exc)) from None
    if verbose:
        for source in run.configs:
            click.echo(f"config: {source}", err=True)
    elapsed = time.monotonic() - started

    stdout = click.get_text_stream("stdout")
    if diff:
        color = stdout.isatty()
        for record in run.changed:
            click.echo(_styled_diff(unified_diff(record), color), nl=False, color=color)
    elif stdin_mode and not check and run.stdout is not None:
        out_stream = sys.stdout.buffer
        out_stream.write(run.stdout)
        out_stream.flush()

    _print_diagnostics(run, verbose, quiet)
    for path in reports:
        try:
            rep.write_report(run, path)
        except OSError as exc:
            click.echo(f"jaxport: cannot write report {path}: {exc.strerror or exc}", err=True)
            return EXIT_USAGE
    if not quiet:
        click.echo(rep.render_text(run, elapsed), err=True, nl=False)
    return run.exit_code()


# --------------------------------------------------------------------------- validate / weights

@cli.command(context_settings=CONTEXT)
@click.argument("original", type=click.Path(exists=True, dir_okay=False))
@click.argument("converted", type=click.Path(exists=True, dir_okay=False))
@click.option("--module", "modules", metavar="NAME", multiple=True,
              help="Module class (or spec table) to validate; repeatable. Default: every "
                   "nn.Module class of ORIGINAL (those that cannot be built are skipped).")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False), metavar="SPEC.toml",
              help="Validation spec: constructor arguments, input shapes, dims. Default: "
                   "ORIGINAL.toml beside ORIGINAL, if it exists.")
@click.option("--examples", type=click.IntRange(min=1), default=25, show_default=True, metavar="N",
              help="Hypothesis examples per module.")
@click.option("--train-steps", type=click.IntRange(min=0), default=0, metavar="K",
              help="Instead of modules, replay K optimizer steps of each training loop in torch "
                   "and JAX (same weights, same generated batches, dropout off) and compare the "
                   "loss and every parameter after each step.")
@click.option("--replay", type=click.Choice(["auto", "loop", "script"]), default="auto", show_default=True,
              help="With --train-steps: 'loop' rebuilds each training loop and feeds it generated "
                   "batches; 'script' runs both scripts with their argument defaults and their own "
                   "data, watching every optimizer step; 'auto' replays loops and runs the scripts "
                   "for the loops the loop replay cannot rebuild.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the validation report as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write JUnit XML (one testcase per module).")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S",
              help="Seed of the hypothesis search and the weights.")
@click.option("--rtol", type=click.FloatRange(min=0), metavar="R",
              help="Relative tolerance (default: per dtype, 1e-5 for float32).")
@click.option("--atol", type=click.FloatRange(min=0), metavar="A",
              help="Absolute tolerance, scaled by max(1, max|torch output|) (default: per dtype).")
@click.option("--device", type=click.Choice(["cpu", "gpu", "tpu"]), default="cpu", show_default=True,
              help="JAX backend of the flax side (matmul precision 'highest', torch TF32 off).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True,
              metavar="SECONDS", help="Per-module time limit; a module over it is an error.")
@click.option("--emit-tests", "emit_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write a pytest file of hypothesis property tests for these modules into DIR.")
@click.option("--record", "record_cmd", metavar="'python SCRIPT.py ARGS'",
              help="Run the original script briefly under torch and record each module class's "
                   "real calls (shapes, dtypes, value ranges) and constructor arguments; they "
                   "become the spec of the classes the spec (if any) does not describe.")
@click.option("--save-spec", type=click.Path(dir_okay=False), metavar="FILE.toml",
              help="With --record: also write the recorded spec (TOML) to FILE.toml.")
@click.option("--record-calls", type=click.IntRange(min=1), default=5, show_default=True, metavar="N",
              help="With --record: stop once every module class called has been recorded N times.")
@click.option("--record-time", type=click.FloatRange(min=0, min_open=True), default=60,
              show_default=True, metavar="SECONDS",
              help="With --record: stop the script after this long (what was recorded is used).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary line.")
def validate(original, converted, modules, spec, examples, train_steps, replay, json_path, junit, seed,
             rtol, atol, device, timeout, emit_dir, record_cmd, save_spec, record_calls,
             record_time, quiet) -> None:
    """Check converted modules against the originals: same weights, hypothesis inputs.

    For each nn.Module class of ORIGINAL (or each table of the spec), the torch module and the
    flax module of the same name in CONVERTED are built with the same constructor arguments,
    the torch weights are copied into the flax variables, and outputs and gradients (inputs and
    parameters) are compared on N drawn inputs; models with BatchNorm also compare a
    training-mode pass and the updated statistics. A failure is shrunk to the smallest failing
    input, shown as the counterexample. Without a spec, inputs are inferred from the first
    layer (Linear, Conv, Embedding, RNN, LayerNorm); a class that needs constructor arguments
    is skipped with a note saying how to give them (`init = {...}` in the spec).

    --record "python train.py ARGS" runs the original script first (briefly, under torch, in a
    child process) and records every call of ORIGINAL's module classes: argument shapes (sizes
    that vary become symbolic dims), dtypes, value ranges, and constructor arguments. The
    recorded tables validate the classes the spec does not describe; --save-spec FILE.toml
    keeps them as a spec file to edit and commit.

    User code runs in a child process. Exit status: 0 every module passed or was skipped,
    1 a module failed or errored, 2 usage error.
    """
    if train_steps and (emit_dir or record_cmd):
        raise click.UsageError("--train-steps replays training loops: it does not go with "
                               "--emit-tests or --record")
    try:
        code = _validate(original, converted, modules, spec, examples, json_path, junit, seed,
                         rtol, atol, device, timeout, emit_dir, quiet,
                         record=(record_cmd, save_spec, record_calls, record_time),
                         train_steps=train_steps, replay=replay)
    except (click.ClickException, BrokenPipeError):
        raise
    except Exception as exc:
        _fail_internal(exc, False)
    sys.exit(code)


def _validate(original, converted, modules, spec, examples, json_path, junit, seed, rtol, atol,
              device, timeout, emit_dir, quiet, record=(None, None, 5, 60.0), train_steps=0,
              replay="auto") -> int:
    import json
    import tempfile
    from pathlib import Path

    from .validate.runner import Fatal, class_names, run_validation
    from .validate.spec import SpecError, parse_spec_file

    if spec is None and Path(original).with_suffix(".toml").is_file():
        spec = str(Path(original).with_suffix(".toml"))
    record_cmd, save_spec, record_calls, record_time = record
    if save_spec and not record_cmd:
        raise click.UsageError("--save-spec writes the spec recorded by --record: give --record too")
    if record_cmd:
        from .validate.record import RecordError, prepare_spec
        if spec is not None:
            try:
                parse_spec_file(spec)
            except SpecError as exc:
                raise click.UsageError(f"bad spec: {exc}") from None
        workdir = emit_dir or tempfile.mkdtemp(prefix="jaxport-record-")
        if not emit_dir:
            import atexit
            import shutil
            atexit.register(shutil.rmtree, workdir, True)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        try:
            spec = str(prepare_spec(original, record_cmd, spec, save_spec, max_calls=record_calls,
                                    budget=record_time, workdir=workdir,
                                    echo=lambda s: click.echo(s, err=True)))
        except RecordError as exc:
            click.echo(f"jaxport validate: {exc}", err=True)
            return EXIT_USAGE
        except OSError as exc:
            click.echo(f"jaxport validate: --save-spec: cannot write: {exc}", err=True)
            return EXIT_USAGE
    cases = {}
    if spec is not None:
        try:
            cases = parse_spec_file(spec)
        except SpecError as exc:
            raise click.UsageError(f"bad spec: {exc}") from None
    known = set(class_names(original)) | set(cases) | {c.cls for c in cases.values()}
    unknown = [m for m in modules if m not in known and not (train_steps and m.startswith("train:"))]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: no such class in {original} "
                                 f"(nor table in the spec); known: {', '.join(sorted(known)) or 'none'}",
                                 param_hint="'--module'")
    colors = {"pass": "green", "fail": "red", "error": "red", "skip": "yellow"}

    def show(m: dict) -> None:
        if quiet:
            return
        def num(x):
            return "n/a" if x is None else f"{x:.2e}"
        line = (f"{click.style(m['status'].upper().ljust(5), fg=colors[m['status']], bold=True)} "
                f"{m['name']}  max_abs={num(m.get('max_abs_err'))} max_rel={num(m.get('max_rel_err'))} "
                f"examples={m.get('examples', 0)} ({m.get('seconds', 0):.1f}s)")
        click.echo(line)
        if (m["status"] != "pass" or m.get("replay") == "script") and m.get("message"):
            for text in m["message"].splitlines()[:12]:
                click.echo(f"      {text}")

    try:
        if train_steps:   # training loops instead of modules (transpiler/validate/train_steps.py)
            from .validate.train_steps import run_train_validation
            results = run_train_validation(original, converted, spec=spec, modules=list(modules),
                                           steps=train_steps, seed=seed, rtol=rtol, atol=atol,
                                           device=device, timeout=timeout, replay=replay, on_result=show)
        else:
            results = run_validation(original, converted, spec=spec, modules=list(modules),
                                     examples=examples, seed=seed, rtol=rtol, atol=atol,
                                     device=device, timeout=timeout, on_result=show)
    except Fatal as exc:
        if exc.usage:
            click.echo(f"jaxport validate: {exc}", err=True)
            return EXIT_USAGE
        raise
    counts = {s: 0 for s in ("pass", "fail", "error", "skip")}
    for m in results:
        counts[m["status"]] += 1
    report = {"modules": results, "summary": counts}
    click.echo(f"{len(results)} module(s): {counts['pass']} passed, {counts['fail']} failed, "
               f"{counts['error']} errors, {counts['skip']} skipped")
    try:
        if json_path:
            Path(json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if junit:
            from .validate.junit import write_junit
            write_junit(report, junit, original)
        if emit_dir:
            from .validate.emit import emit_tests
            names = [m["name"] for m in results if m["status"] != "skip"]
            path = emit_tests(emit_dir, original, converted, spec, names, examples, seed)
            click.echo(f"wrote {path}")
    except OSError as exc:
        click.echo(f"jaxport validate: cannot write: {exc}", err=True)
        return EXIT_USAGE
    if not results:
        click.echo("jaxport validate: no training loop to replay" if train_steps else
                   "jaxport validate: no nn.Module class to validate", err=True)
        return EXIT_FINDINGS
    return EXIT_FINDINGS if counts["fail"] or counts["error"] else EXIT_OK


@cli.command(context_settings=CONTEXT)
@click.argument("checkpoint", metavar="CHECKPOINT.pt", type=click.Path(exists=True, dir_okay=False))
@click.option("--module", "module", required=True, metavar="FILE.py:CLASS",
              help="The ORIGINAL PyTorch file and the nn.Module class the checkpoint belongs to.")
@click.option("-o", "--output", "out", required=True, metavar="PARAMS.msgpack",
              type=click.Path(), help="Where to write the flax variables (a file; with "
                                      "--format orbax, a new directory).")
@click.option("--format", "fmt", type=click.Choice(["msgpack", "orbax"]), default="msgpack",
              show_default=True, help="flax msgpack serialization, or an orbax checkpoint "
                                      "(needs orbax-checkpoint: pip install 'jaxport[orbax]').")
@click.option("--converted", type=click.Path(exists=True, dir_okay=False), metavar="CONVERTED.py",
              help="The converted file holding CLASS (default: convert FILE.py in memory).")
@click.option("--init", "init", metavar="NAME=VALUE", multiple=True,
              help="Constructor argument of CLASS (repeatable; Python literals, else strings).")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False), metavar="SPEC.toml",
              help="Validation spec giving CLASS's init and inputs (default: FILE.toml if present).")
@click.option("--unsafe-load", is_flag=True,
              help="Unpickle arbitrary objects (torch.load(weights_only=False)). Only for trusted files.")
def weights(checkpoint, module, out, fmt, converted, init, spec, unsafe_load) -> None:
    """Convert a torch checkpoint into flax variables (flax msgpack, or orbax).

    FILE.py is the ORIGINAL PyTorch source (the checkpoint's structure comes from its CLASS);
    the flax module is CLASS of the converted file (--converted) or of FILE.py converted in
    memory. CHECKPOINT.pt holds a state_dict, or a dict holding one under 'state_dict',
    'model_state_dict', 'model', 'net', 'module' or 'network' (a 'module.' prefix from
    DataParallel is dropped). It is read with torch.load(weights_only=True) unless
    --unsafe-load. Load the result with
    flax.serialization.from_bytes(model.init(...), open(PARAMS.msgpack, 'rb').read()),
    or with --format orbax: orbax.checkpoint.StandardCheckpointer().restore(OUT_DIR).
    Exit status: 0 written, 1 the checkpoint could not be converted, 2 usage error.
    """
    from pathlib import Path

    from .validate.checkpoint import CheckpointError, convert_checkpoint, parse_init
    path, sep, cls_name = module.rpartition(":")
    if not sep or not path or not cls_name.isidentifier():
        raise click.BadParameter(f"{module!r}: expected FILE.py:CLASS", param_hint="'--module'")
    if not Path(path).is_file():
        raise click.BadParameter(f"{path}: no such file", param_hint="'--module'")
    try:
        init_kwargs = parse_init(init)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--init'") from None
    if unsafe_load:
        click.echo("jaxport weights: warning: --unsafe-load unpickles arbitrary objects; only use "
                   "it for checkpoints you trust", err=True)
    try:
        info = convert_checkpoint(checkpoint, path, cls_name, out, init=init_kwargs,
                                  converted=converted, spec=spec, unsafe_load=unsafe_load,
                                  fmt=fmt)
    except CheckpointError as exc:
        click.echo(f"jaxport weights: {exc}", err=True)
        sys.exit(EXIT_FINDINGS)
    except OSError as exc:
        click.echo(f"jaxport weights: {exc}", err=True)
        sys.exit(EXIT_FINDINGS)
    except Exception as exc:
        _fail_internal(exc, False)
    click.echo(f"wrote {out}: {info['tensors']} torch tensors (from {info['found']}) -> "
               f"{info['leaves']} flax arrays ({info['elements']} values) in "
               f"{', '.join(info['collections'])}")
    sys.exit(EXIT_OK)


# --------------------------------------------------------------------------- explain

@cli.command(context_settings=CONTEXT)
@click.argument("code")
def explain(code: str) -> None:
    """Explain a diagnostic code (JP101, ...) with an example."""
    from .diagnostics import explain as explain_code
    try:
        text = explain_code(code.strip())
    except Exception as exc:
        _fail_internal(exc, False)
    if text is None:
        click.echo(f"jaxport explain: unknown code {code!r}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(text, nl=False)


# --------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``jaxport``); ``python cli.py`` calls the same."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="jaxport",
             standalone_mode=True)


if __name__ == "__main__":
    main()

"""Convert whole trees: plan which files go where, convert ``.py`` files, copy the rest.

``convert_tree`` is the engine behind ``jaxport convert``. It mirrors every input into the
output directory (``.py`` files through :func:`transpiler.api.convert_bytes`, ``.ipynb``
notebooks through :mod:`transpiler.notebooks`, every other file byte for byte), never writes
into an input tree (except with ``in_place``, which rewrites changed files after keeping a
``<file>.torch.bak`` backup), writes atomically, and runs files in parallel. Its result does
not depend on the number of workers: records are sorted by path.

Each input directory may configure the run in ``[tool.jaxport]`` of its ``pyproject.toml``
(:mod:`transpiler.config`); ``overrides`` (the command-line flags) win over it.

Problems with the command line (OUT inside an input, a missing ``-o``) raise
:class:`TreeError`; problems with one file (unreadable, unwritable, unparseable) become that
file's diagnostics and the run goes on.
"""
from __future__ import annotations

import gc
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterable

from . import config as cfg
from . import diagnostics as diag
from .api import FileResult, Options, convert_bytes, decode
from .diagnostics import Diagnostic
from .notebooks import convert_notebook, is_notebook

STDIN = "-"
STDIN_PATH = "<stdin>"

# Directories never worth converting or copying: VCS metadata, caches, virtual environments.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", ".nox", ".eggs",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints",
    "node_modules",
})
BACKUP_SUFFIX = ".torch.bak"    # --in-place keeps the original of each rewritten file here
SKIP_SUFFIXES = (".pyc", ".pyo", BACKUP_SUFFIX)


class TreeError(ValueError):
    """A problem with the request as a whole (a usage error: exit code 2)."""


@dataclass
class FileRecord:
    """One input file and what happened to it."""

    path: str                       # relative to its input root, '/'-separated (report path)
    display: str                    # where the user finds the input (for path:line:col)
    result: FileResult
    python: bool                    # went through the converter (.py file or notebook)
    original_text: str | None = None   # kept only when asked for (diff, html report)
    output_text: str | None = None

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return sorted(self.result.diagnostics)

    @property
    def changed(self) -> bool:
        return self.result.changed

    @property
    def has_errors(self) -> bool:
        return self.result.has_errors

    def to_json(self) -> dict:
        """This file's entry in the JSON report (keys in the documented order)."""
        return {"path": self.path, "status": self.status,
                "diagnostics": [{"code": d.code, "severity": d.severity, "line": d.line,
                                 "col": d.col, "message": d.message} for d in self.diagnostics]}


@dataclass
class RunResult:
    records: list[FileRecord] = field(default_factory=list)   # sorted by path
    notes: list[str] = field(default_factory=list)            # skipped links / special files
    check: bool = False
    stdout: bytes | None = None                               # stdin mode: the converted bytes
    configs: list[str] = field(default_factory=list)          # pyproject.toml files used

    @property
    def has_errors(self) -> bool:
        return any(r.has_errors for r in self.records)

    @property
    def changed(self) -> list[FileRecord]:
        return [r for r in self.records if r.changed]

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("converted", "partial", "copied", "failed")}
        for r in self.records:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def summary(self) -> dict[str, int]:
        """The report's ``summary`` object, exactly the keys of the JSON contract."""
        counts = self.counts()
        return {
            "files": len(self.records),
            "converted": counts["converted"],
            "partial": counts["partial"],
            "failed": counts["failed"],
            "torch_call_sites": sum(r.result.torch_call_sites for r in self.records),
            "converted_call_sites": sum(r.result.converted_call_sites for r in self.records),
        }

    def exit_code(self) -> int:
        if self.has_errors:
            return 1
        if self.check and self.changed:
            return 1
        return 0


# --------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Job:
    source: str                     # absolute input path
    target: str | None              # absolute output path; None: write nothing
    path: str                       # report path
    display: str
    kind: str                       # "python" | "notebook" | "copy"
    options: Options
    keep_text: bool
    roots: tuple[str, ...]          # resolved input roots: never write below them
    ignores: tuple[str, ...] = ()   # codes not reported for this file (per-file-ignores)
    in_place: bool = False          # target is the source: write only if changed, with backup

    @property
    def python(self) -> bool:
        return self.kind != "copy"


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (target, link text, report path)
    notes: list[str] = field(default_factory=list)
    out_dirs: list[str] = field(default_factory=list)
    roots: tuple[str, ...] = ()
    configs: list[str] = field(default_factory=list)


def _inside(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (both resolved)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _is_venv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def skip_dir(name: str, path: str) -> bool:
    return name in SKIP_DIRS or name.endswith(".egg-info") or _is_venv(path)


def _rel(parts: Iterable[str]) -> str:
    return "/".join(p for p in parts if p)


def input_containing(path: str, inputs: list[str]) -> str | None:
    """The input directory (or file) that ``path`` would be written into, if any."""
    real = os.path.realpath(path)
    for p in inputs:
        if p != STDIN and os.path.exists(p) and _inside(real, os.path.realpath(p)):
            return p
    return None


def _kind(path: str) -> str:
    if path.endswith(".py"):
        return "python"
    if is_notebook(path):
        return "notebook"
    return "copy"


def _root_settings(root: str, overrides: cfg.Settings, plan: Plan) -> cfg.Settings:
    """The settings for one input: its pyproject.toml's (if a directory), then the flags."""
    if not os.path.isdir(root):
        return overrides
    try:
        found = cfg.load(root)
    except cfg.ConfigError as exc:
        raise TreeError(str(exc)) from None
    if found.source is not None:
        plan.configs.append(found.source)
    return overrides.over(found)


def _options(settings: cfg.Settings, base: Options) -> Options:
    return Options(parallel=settings.parallel or base.parallel, layout=settings.layout or base.layout)


def plan_tree(inputs: list[str], out: str | None, options: Options, *, write: bool = True,
              keep_text: bool = False, overrides: cfg.Settings | None = None,
              in_place: bool = False) -> Plan:
    """Decide, for every input file, where its output goes. Raises TreeError on usage errors
    (and on a malformed ``[tool.jaxport]`` configuration)."""
    overrides = overrides or cfg.Settings()
    if not inputs:
        raise TreeError("no PATH given")
    if STDIN in inputs:
        raise TreeError("'-' (standard input) must be the only PATH")
    if in_place:
        if out is not None:
            raise TreeError("--in-place rewrites the inputs themselves: drop -o")
        if not write:
            raise TreeError("--in-place and --check do not go together (--check writes nothing)")
    elif write and out is None:
        raise TreeError("missing option '-o' / '--output' (where to write the converted tree)")
    for p in inputs:
        if not os.path.lexists(p):
            raise TreeError(f"path does not exist: {p}")
        if not (os.path.isdir(p) or os.path.isfile(p)):
            raise TreeError(f"not a file or directory: {p}")

    roots = [os.path.realpath(p) for p in inputs]
    out_real = os.path.realpath(out) if out is not None else None
    single_file_target = (out is not None and len(inputs) == 1 and os.path.isfile(inputs[0])
                          and out.endswith(".py") and not os.path.isdir(out))
    if out_real is not None:
        if os.path.exists(out_real) and not os.path.isdir(out_real) and not single_file_target:
            raise TreeError(f"output exists and is not a directory: {out}")
        for p, root in zip(inputs, roots):
            if os.path.isdir(root):
                if _inside(out_real, root):
                    raise TreeError(f"output {out} is inside the input directory {p}: "
                                    "jaxport never writes into its input; choose an output outside it")
                if _inside(root, out_real):
                    raise TreeError(f"input directory {p} is inside the output {out}: "
                                    "converting would overwrite the input; choose another output")
            elif out_real == root:
                raise TreeError(f"output {out} is the input file itself")
    guard_roots = tuple(sorted(set(roots)))   # input dirs and files: never write at or below them

    plan = Plan(roots=guard_roots)
    multi = len(inputs) > 1
    if multi:
        names = [os.path.basename(r) for r in roots]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise TreeError(f"several inputs are named {dupes[0]!r}: their outputs would collide; "
                            "convert them one at a time")

    def make_job(settings: cfg.Settings, root_options: Options, prefix: str):
        def job(source: str, rel: str, display: str) -> Job:
            own = rel[len(prefix) + 1:] if prefix else rel     # path as seen from its input root
            kind = "copy" if settings.excluded(own) else _kind(source)
            target = None
            if in_place:
                target = source if kind != "copy" else None
            elif write and out_real is not None:
                target = out_real if single_file_target else os.path.join(out_real, *rel.split("/"))
            return Job(source, target, rel, display, kind, root_options, keep_text,
                       () if in_place else guard_roots, settings.ignored_codes(own), in_place)
        return job

    for p, root in zip(inputs, roots):
        prefix = os.path.basename(root) if multi else ""
        settings = _root_settings(root, overrides, plan)
        job = make_job(settings, _options(settings, options), prefix)
        if os.path.isfile(root):
            name = os.path.basename(os.path.abspath(p)) if not multi else prefix
            plan.jobs.append(job(root, name, os.path.normpath(p)))
            continue
        _walk(root, root, prefix, os.path.normpath(p), plan, job, write and not in_place,
              None if in_place else out_real)
    plan.jobs.sort(key=lambda j: j.path)
    return plan


def _walk(root: str, directory: str, rel: str, display: str, plan: Plan, job, write: bool,
          out_real: str | None) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        plan.notes.append(f"{display}: directory skipped: cannot list it ({exc.strerror or exc})")
        return
    if write and out_real is not None:
        plan.out_dirs.append(os.path.join(out_real, *rel.split("/")) if rel else out_real)
    for entry in entries:
        child_rel = _rel((rel, entry.name))
        child_display = os.path.join(display, entry.name)
        try:
            if entry.is_symlink():
                _link(root, entry, child_rel, child_display, plan, write, out_real)
            elif entry.is_dir(follow_symlinks=False):
                if not skip_dir(entry.name, entry.path):
                    _walk(root, entry.path, child_rel, child_display, plan, job, write, out_real)
            elif entry.is_file(follow_symlinks=False):
                if not entry.name.endswith(SKIP_SUFFIXES):
                    plan.jobs.append(job(entry.path, child_rel, child_display))
            else:
                plan.notes.append(f"{child_display}: skipped: not a regular file")
        except OSError as exc:
            plan.notes.append(f"{child_display}: skipped: {exc.strerror or exc}")


def _link(root: str, entry: os.DirEntry, rel: str, display: str, plan: Plan, write: bool,
          out_real: str | None) -> None:
    """Symlinks are never followed. One that points inside the tree is recreated (relative)
    so that it points at the converted counterpart; others are skipped with a note."""
    resolved = os.path.realpath(entry.path)
    if not os.path.exists(resolved):
        plan.notes.append(f"{display}: skipped: dangling symlink")
        return
    if not _inside(resolved, root):
        plan.notes.append(f"{display}: skipped: symlink to outside the input tree (not followed)")
        return
    if write and out_real is not None:
        target = os.path.join(out_real, *rel.split("/"))
        link_text = os.path.relpath(resolved, os.path.dirname(os.path.join(root, *rel.split("/"))))
        plan.links.append((target, link_text, rel))


# --------------------------------------------------------------------------- one file

def io_error(message: str) -> Diagnostic:
    """A file could not be read or written (JP005)."""
    try:
        return diag.make("JP005", message)
    except KeyError:  # code not registered yet: keep the run going with the same record
        return Diagnostic(line=1, col=0, code="JP005", severity="error", message=message)


def _texts(data: bytes, result: FileResult) -> tuple[str | None, str | None]:
    original, _, err = decode(data)
    if err is not None:
        return None, None
    if result.output == data:
        return original, original
    output, _, err = decode(result.output)
    return original, (output if err is None else None)


def _safe_target(target: str, roots: tuple[str, ...]) -> None:
    """Create the target's directory; refuse a target that resolves into an input (an output
    directory that is a symlink back into the source, say)."""
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    real = os.path.join(os.path.realpath(parent), name)
    for root in roots:
        if _inside(real, root):
            raise OSError(f"refusing to write {target}: it resolves into the input {root}")


def _atomic_write(target: str, data: bytes | None, source: str | None, roots: tuple[str, ...]) -> None:
    """Write ``data`` (or copy ``source``) to ``target`` via a temp file in the same directory."""
    _safe_target(target, roots)
    parent, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".jaxport-tmp", dir=parent)
    try:
        if data is not None:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        else:
            os.close(fd)
            shutil.copyfile(source, tmp)
        if source is not None:
            try:
                os.chmod(tmp, stat.S_IMODE(os.stat(source).st_mode))
            except OSError:
                pass
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _backup(source: str) -> None:
    """Keep the original beside itself before an in-place rewrite. An existing backup is
    never overwritten: after several runs it still holds the very first original."""
    backup = source + BACKUP_SUFFIX
    if not os.path.lexists(backup):
        shutil.copy2(source, backup)


def _failure(job: Job, message: str, tb: str | None = None, code: str = "JP003") -> FileRecord:
    d = io_error(message) if code == "JP005" else diag.make(code, message)
    return FileRecord(job.path, job.display, FileResult(job.path, "failed", b"", [d], traceback=tb),
                      job.python)


def process(job: Job) -> FileRecord:
    """Convert or copy one file. Never raises for problems with the file itself."""
    try:
        return _process(job)
    except Exception as exc:  # a bug here must not stop the run
        import traceback
        return _failure(job, f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc())


def _process(job: Job) -> FileRecord:
    if not job.python:
        result = FileResult(job.path, "copied", b"")
        if job.target is not None:
            try:
                _atomic_write(job.target, None, job.source, job.roots)
            except OSError as exc:
                result = FileResult(job.path, "failed", b"", [io_error(f"cannot copy to output: {_oserr(exc)}")])
        elif not os.access(job.source, os.R_OK):
            result = FileResult(job.path, "failed", b"", [io_error("cannot read file: permission denied")])
        return FileRecord(job.path, job.display, result, False)

    try:
        with open(job.source, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return _failure(job, f"cannot read file: {_oserr(exc)}", code="JP005")
    record = convert_record(data, job.path, job.display, job.options, job.keep_text,
                            job.kind, job.ignores, origin=job.source)
    if job.target is not None and not (job.in_place and record.result.output == data):
        try:
            if job.in_place:
                _backup(job.source)
            _atomic_write(job.target, record.result.output, job.source, job.roots)
        except OSError as exc:
            record.result.status = "failed"
            record.result.diagnostics.append(io_error(f"cannot write output: {_oserr(exc)}"))
        else:
            _write_manifest(job, data, record)
    record.result.output = b""      # written: do not ship the bytes back to the parent
    return record


def _write_manifest(job: Job, data: bytes, record: FileRecord) -> None:
    """The training manifest (``<stem>.jaxport.json``, :mod:`transpiler.manifest`) beside a
    converted script that has a training loop; nothing for other files, notebooks and
    ``--in-place`` runs. A manifest that cannot be built or written is left out (validation
    rebuilds it from the two files)."""
    if job.kind != "python" or job.in_place or record.result.status == "failed":
        return
    from .manifest import build_manifest, dumps, might_train, sidecar_name
    original, _, err = decode(data)
    if err is not None or not might_train(original):
        return
    converted, _, err = decode(record.result.output)
    try:
        manifest = build_manifest(original, converted if err is None else None, job.path,
                                  record.result.helpers_span, record.result.helpers)
        if manifest is not None:
            target = os.path.join(os.path.dirname(job.target), sidecar_name(os.path.basename(job.target)))
            _atomic_write(target, dumps(manifest), None, job.roots)
    except (OSError, RecursionError, ValueError):
        pass


def convert_record(data: bytes, path: str, display: str, options: Options, keep_text: bool,
                   kind: str = "python", ignores: tuple[str, ...] = (), origin: str | None = None) -> FileRecord:
    texts = None
    try:
        if kind == "notebook":
            nb = convert_notebook(data, path, options)
            result, texts = nb.result, (nb.original_text, nb.output_text)
        else:
            result = convert_bytes(data, path, options, origin=origin)
    except Exception as exc:
        import traceback
        result = FileResult(path, "failed", data,
                            [diag.make("JP003", f"internal error: {type(exc).__name__}: {exc}")],
                            traceback=traceback.format_exc())
    if ignores:
        _apply_ignores(result, ignores)
    original = output = None
    if keep_text and (result.status != "copied" or result.changed):
        original, output = texts if texts is not None else _texts(data, result)
    return FileRecord(path, display, result, True, original, output)


def _apply_ignores(result: FileResult, ignores: tuple[str, ...]) -> None:
    """Drop ignored codes from the file's diagnostics; a file whose every warning is ignored
    counts as ``converted`` (the output itself, ``# jaxport:`` comments included, is the same)."""
    result.diagnostics = cfg.ignore(result.diagnostics, ignores)
    if result.status == "partial" and not any(d.severity in ("warning", "error")
                                              for d in result.diagnostics):
        result.status = "converted"


def _oserr(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return exc.strerror or str(exc)


# --------------------------------------------------------------------------- the run

ProgressFn = Callable[[int, int, FileRecord], None]


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def convert_tree(inputs: list[str], out: str | None, options: Options | None = None,
                 jobs: int | None = None, on_progress: ProgressFn | None = None, *,
                 check: bool = False, keep_text: bool = False,
                 stdin: BinaryIO | None = None, overrides: cfg.Settings | None = None,
                 in_place: bool = False) -> RunResult:
    """Convert ``inputs`` (files, directories, or ``["-"]`` for standard input) into ``out``.

    With ``check`` nothing is written. With ``keep_text`` every converted file's original and
    converted text is kept on its record (for diffs and the HTML report). ``options`` are the
    defaults, each input directory's ``[tool.jaxport]`` goes over them and ``overrides`` (the
    command-line flags) over that. With ``in_place`` (and no ``out``) every file that changes
    is rewritten where it is, its original kept as ``<file>.torch.bak``.
    """
    options = options or Options()
    if list(inputs) == [STDIN]:
        if in_place:
            raise TreeError("--in-place cannot be used with '-' (standard input)")
        merged = (overrides or cfg.Settings()).over(cfg.Settings())
        return _convert_stdin(_options(merged, options), check, keep_text, stdin, on_progress)
    plan = plan_tree(list(inputs), out, options, write=not check, keep_text=keep_text,
                     overrides=overrides, in_place=in_place)
    run = RunResult(notes=list(plan.notes), check=check, configs=list(plan.configs))
    for directory in plan.out_dirs:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError:
            pass  # each file reports its own write error
        _remove_stale_temps(directory)
    with _TerminateAsInterrupt(), _fewer_collections():
        records = _run_jobs(plan.jobs, jobs or default_jobs(), on_progress)
    for target, link_text, rel in plan.links:
        try:
            _safe_target(target, plan.roots)
            if os.path.islink(target) or os.path.isfile(target):
                os.unlink(target)   # replace a stale output
            os.symlink(link_text, target)
        except OSError as exc:
            run.notes.append(f"{rel}: symlink not recreated: {_oserr(exc)}")
    run.records = sorted(records, key=lambda r: r.path)
    run.notes.sort()
    return run


YOUNG_OBJECTS_BEFORE_COLLECTION = 10_000     # Python's default is 700


@contextmanager
def _fewer_collections():
    """Converting makes syntax trees of many small objects that live for one file: the
    garbage collector would scan them every 700 allocations, and rescan the tables and
    imported modules at every full collection (about 6% of the CPU of a corpus conversion).
    Objects alive before the run are frozen out of the collector (forked workers inherit
    that, and share their pages longer) and young collections come less often."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], YOUNG_OBJECTS_BEFORE_COLLECTION), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _convert_stdin(options: Options, check: bool, keep_text: bool, stdin: BinaryIO | None,
                   on_progress: ProgressFn | None) -> RunResult:
    stream = stdin if stdin is not None else sys.stdin.buffer
    data = stream.read()
    record = convert_record(data, STDIN_PATH, STDIN_PATH, options, keep_text)
    run = RunResult(records=[record], check=check, stdout=record.result.output)
    record.result.output = b""
    if on_progress:
        on_progress(1, 1, record)
    return run


def _run_jobs(jobs: list[Job], workers: int, on_progress: ProgressFn | None) -> list[FileRecord]:
    total = len(jobs)
    done: list[FileRecord] = []

    def finished(record: FileRecord) -> None:
        done.append(record)
        if on_progress:
            on_progress(len(done), total, record)

    python_jobs = [j for j in jobs if j.python]
    if workers <= 1 or len(python_jobs) < 4:     # starting workers would cost more than it saves
        for j in jobs:
            finished(process(j))
        return done

    # .py files go to worker processes; plain copies are I/O and run here meanwhile.
    pending = python_jobs
    for attempt in range(3):
        if not pending:
            break
        isolate = attempt == 2
        pending = _pool_round(pending, workers, finished, isolate,
                              copies=[j for j in jobs if not j.python] if attempt == 0 else [])
    for j in pending:   # crashed even alone: a worker died on this very file
        finished(_died(j))
    return done


def _died(job: Job) -> FileRecord:
    """The process converting this file died: report it and copy the original unchanged."""
    record = _failure(job, "internal error: the worker process converting this file died")
    if job.target is not None:
        try:
            _atomic_write(job.target, None, job.source, job.roots)
        except OSError as exc:
            record.result.diagnostics.append(io_error(f"cannot copy to output: {_oserr(exc)}"))
    return record


def _fork_is_safe() -> bool:
    """Whether workers may be forked from this process: on Linux, with no other thread
    running and none of the libraries that start native threads (jax, torch) imported."""
    import multiprocessing
    import threading
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and threading.active_count() == 1
            and not any(name in sys.modules for name in ("jax", "jaxlib", "torch", "tensorflow")))


def _warm_for_workers() -> None:
    """Load what every worker needs before forking them, so they inherit it."""
    try:
        import importlib
        for name in WORKER_MODULES:
            importlib.import_module(name)
        from .mapping import load_tables
        from .prelude_index import helpers
        load_tables()
        helpers()
    except Exception:       # a worker that needs them reports the problem per file
        pass


def _mp_context():
    """Workers are forked from this process where that is safe (:func:`_fork_is_safe`: the
    CLI, a script), warm: nothing to start, import or load. Otherwise (threads running, e.g.
    jax in a notebook: never fork those) they start from a fresh forkserver where there is
    one, else from the platform's default (spawn)."""
    import multiprocessing
    if _fork_is_safe():
        _warm_for_workers()
        return multiprocessing.get_context("fork")
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_MODULES))   # workers start with these loaded
        return ctx
    return None


def _pool_round(jobs: list[Job], workers: int, finished, isolate: bool, copies: list[Job]) -> list[Job]:
    """Run jobs in a process pool; return those lost to a broken pool (to retry)."""
    if isolate:
        lost = []
        for j in jobs:
            lost += _pool_round([j], 1, finished, False, [])
        return lost
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    lost: list[Job] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_mp_context(),
                             initializer=_worker_init) as pool:
        try:
            futures = {pool.submit(process, j): j for j in jobs}
            for j in copies:
                finished(process(j))
            for fut in as_completed(futures):
                j = futures[fut]
                try:
                    finished(fut.result())
                except BrokenProcessPool:
                    lost.append(j)
                except Exception as exc:
                    finished(_failure(j, f"internal error: {type(exc).__name__}: {exc}"))
        except BaseException:
            # Ctrl-C / SIGTERM: drop the queued files, let the running ones finish their
            # (atomic) writes, then stop; never wait for the whole queue.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sorted(lost, key=lambda j: j.path)


# The conversion path, imported by the forkserver before it forks the workers (the passes
# the pipeline imports on first use included), so no worker imports them itself.
WORKER_MODULES = ("transpiler.tree", "transpiler.pipeline", "transpiler.rewriters",
                  "transpiler.passes.mutation", "transpiler.passes.runtime",
                  "transpiler.passes.training", "transpiler.passes.distributed",
                  "transpiler.passes.thirdparty")


def _worker_init() -> None:
    """Workers leave Ctrl-C to the parent, which cancels the queue and stops them cleanly (no
    worker tracebacks, no file half-converted into a failure). SIGTERM still ends a worker
    at once (a forked worker drops the SIGTERM handler it inherits from the run,
    :class:`_TerminateAsInterrupt`): its temporary file, if any, is removed by the next run."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _TerminateAsInterrupt:
    """During a run, SIGTERM stops it like Ctrl-C (KeyboardInterrupt), so temporary files
    are removed and workers stopped; the previous handler is restored afterwards."""

    def __enter__(self):
        import signal
        import threading
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def interrupt(signum, frame):
                raise KeyboardInterrupt(f"signal {signum}")
            try:
                self.previous = signal.signal(signal.SIGTERM, interrupt)
            except (ValueError, OSError):
                self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            import signal
            signal.signal(signal.SIGTERM, self.previous)


TEMP_SUFFIX = ".jaxport-tmp"


def _remove_stale_temps(directory: str) -> None:
    """Temporary files left by a run killed outright (SIGKILL, power loss) in an output
    directory: ours by name (``.<file>.<random>.jaxport-tmp``), never a finished file."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            except OSError:
                pass

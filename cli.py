"""The ``bnnc`` command. Every user error prints ``error: <message>`` and exits with code 2."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from runtime.errors import BnncError


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn BnncError into a one-line message and exit code 2; never show a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BnncError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # the reader went away (`bnnc verify ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug in bnnc: still one line, but say so
            if os.environ.get("BNNC_DEBUG"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            _fail(f"internal error ({type(e).__name__}: {first}); rerun with BNNC_DEBUG=1 and report it", 3)

    return wrapper


def _versions() -> str:
    """bnnc's version, the versions of what it runs on, and the CPU's popcount instructions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{p} {v(p)}" for p in ("numpy", "numba", "llvmlite", "onnx", "onnx-ir", "onnxruntime"))
    return f"bnnc {v('bnnc')}\n{deps}\nPython {platform.python_version()}\n{_cpu_line(platform.machine())}"


def _cpu_line(machine: str) -> str:
    """The popcount instructions the kernels can use, from /proc/cpuinfo's flags (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return f"cpu: {machine} (popcount instructions unknown: no /proc/cpuinfo)"
    return f"cpu: {machine}, popcount: {popcount_isa(machine, text)}"


def popcount_isa(machine: str, cpuinfo: str) -> str:
    """The best popcount the CPU offers, from the flags (x86) or Features (Arm) of /proc/cpuinfo."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if machine in ("aarch64", "arm64"):
        return "NEON cnt" if "asimd" in flags else "scalar (no NEON)"
    if "avx512_vpopcntdq" in flags:
        return "AVX-512 VPOPCNTDQ"
    if "avx2" in flags and "popcnt" in flags:
        return "AVX2 + POPCNT"
    return "POPCNT" if "popcnt" in flags else "none (software popcount)"


def _print_version(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        click.echo(_versions())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the versions of bnnc and its dependencies and the CPU's popcount instructions.")
def main():
    """bnnc: compile binarized neural networks from ONNX to a fast bit-packed CPU runtime."""


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), help="Artifact path [default: MODEL with .bnn].")
@click.option("--dump-passes", "dump_dir", type=click.Path(file_okay=False), help="Write the graph after every pass to DIR.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Static shape of an input, e.g. input=1,3,224,224.")
@click.option("-v", "--verbose", is_flag=True, help="Print every pass with its stats and the reasons rules did not apply.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write an HTML compile report to REPORT.html.")
@click.option("--emit-python", "emit_dir", type=click.Path(file_okay=False),
              help="Also write the code the runtime runs for the model as DIR/<model>.py (+ its weights, .npz).")
@handle_errors
def compile_cmd(model, out, dump_dir, input_shapes, verbose, report_path, emit_dir):
    """Compile MODEL.onnx into a .bnn artifact."""
    import bnnc
    from bnnc.report import print_record

    if report_path:
        from bnnc.html_report import check_output_dir

        check_output_dir(report_path)

    def progress(rec):
        if verbose:
            print_record(rec)

    res = bnnc.compile_model(model, out, dump_dir, list(input_shapes), progress=progress)
    click.echo(f"wrote {res.path} ({res.artifact_bytes:,} bytes, {len(res.model.graph)} kernels)")
    if dump_dir:
        click.echo(f"pass dumps in {dump_dir}/")
    _say_if_all_float(json.loads(res.manifest["metadata"].get("bnnc.layers", "[]")))
    if report_path:
        from bnnc.html_report import write_report
        from bnnc.report import build_report

        report = build_report(res.path)
        report.update(model=model, passes=[vars(r) for r in res.records])
        write_report(report_path, report)
        click.echo(f"wrote {report_path}")
    if emit_dir:
        from runtime import InferenceSession
        from runtime.export import write_module

        stem = os.path.splitext(os.path.basename(res.path))[0]
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
        name = name if name[:1].isalpha() else "model_" + name
        py, npz = write_module(InferenceSession(res.path, threads=1, plan="emitted"), emit_dir, name)
        click.echo(f"wrote {py} and {npz}")


def _say_if_all_float(layers: list[dict]) -> None:
    """A compile that binarized nothing says so, and why for every layer."""
    if any(r["mode"] != "float" for r in layers):
        return
    if not layers:
        click.echo("note: the model has no convolution or linear layer; everything runs in float", err=True)
        return
    click.echo("note: no binarizable layer found; every layer runs in float:", err=True)
    for r in layers:
        click.echo(f"  {r['name']} ({r['op']}): {r['reason']}", err=True)


@main.command("report")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), required=True, help="The HTML file to write.")
@click.option("--profile", "profile", type=click.Path(dir_okay=False), help="`bnnc bench --profile --json` output: adds time per layer.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Static shape of an input (.onnx only).")
@handle_errors
def report_cmd(model, out, profile, input_shapes):
    """Write a self-contained HTML report of MODEL (.onnx, compiled in memory, or .bnn)."""
    from bnnc.html_report import check_output_dir, read_profile, write_report
    from bnnc.report import build_report

    check_output_dir(out)
    if profile:
        read_profile(profile)  # a bad profile fails before the model is compiled
    write_report(out, build_report(model, list(input_shapes)), profile)
    click.echo(f"wrote {out}")


@main.command("run")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--input", "inputs", multiple=True, metavar="[NAME=]FILE.npy", required=True, help="An input array; NAME= may be left out when the model has one input.")
@click.option("--output", "out", type=click.Path(dir_okay=False), help="Write all outputs to OUT.npz, keyed by output name (OUT.npy: the one output of a single-output model).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for the kernels [default: all cores].")
@handle_errors
def run_cmd(artifact, inputs, out, threads):
    """Run a compiled ARTIFACT on .npy inputs."""
    import numpy as np

    from runtime import InferenceSession

    sess = InferenceSession(artifact, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    if out:
        _check_output_path(out, names)
    feeds = _read_feeds(inputs, [i.name for i in sess.get_inputs()])
    results = sess.run(None, feeds)
    if out:
        _save_arrays(out, dict(zip(names, results)))
        click.echo(f"wrote {out} ({', '.join(names)})")
        return
    with np.printoptions(precision=5, suppress=True, threshold=10, edgeitems=5):
        for n, r in zip(names, results):
            click.echo(f"{n}: shape {list(r.shape)} {r.dtype}")
            click.echo(f"  first values: {r.reshape(-1)[:10]}")


def _read_feeds(specs, input_names):
    import numpy as np

    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(input_names) != 1:
                raise BnncError(f"the model has {len(input_names)} inputs ({', '.join(input_names)}); use --input NAME=FILE.npy")
            name, path = input_names[0], spec
        if name in feeds:
            raise BnncError(f"input '{name}' is given more than once")
        if not os.path.isfile(path):
            raise BnncError(f"no such file: '{path}'")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except Exception as e:
            raise BnncError(f"cannot read '{path}' as a .npy array: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if not isinstance(feeds[name], np.ndarray):
            raise BnncError(f"'{path}' is not a single .npy array")
    return feeds


def _check_output_path(path, names):
    """OUT.npz holds every output; OUT.npy the one output of a single-output model."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npz", ".npy"):
        raise BnncError(f"--output '{path}' must end in .npz (all outputs) or .npy (a single output)")
    if suffix == ".npy" and len(names) != 1:
        raise BnncError(f"--output '{path}': a .npy file holds one array and the model has {len(names)} outputs "
                        f"({', '.join(names)}); use a .npz file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise BnncError(f"output directory '{directory}' does not exist")


def _save_arrays(path, arrays):
    """Write ``arrays`` to ``path`` (.npz, or .npy for one array) through a temporary file."""
    import tempfile

    import numpy as np

    npy = path.lower().endswith(".npy")
    fd, tmp = tempfile.mkstemp(suffix=".npy" if npy else ".npz", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        if npy:
            np.save(tmp, next(iter(arrays.values())))
        else:
            np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@main.command("deploy")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False), help="The folder to build (replaces an earlier deploy there).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Static shape of an input (.onnx only).")
@handle_errors
def deploy_cmd(model, out, input_shapes):
    """Build a folder to copy to a Raspberry Pi: MODEL (.onnx or .bnn), the runtime, run.py, a README."""
    from bnnc.deploy import deploy

    res = deploy(model, out, list(input_shapes))
    click.echo(f"wrote {res.path}/ ({res.artifact}, runtime/, run.py, requirements.txt, README.md)")
    click.echo(f"on the device: see {os.path.join(res.path, 'README.md')}")


@main.command("passes")
@handle_errors
def passes_cmd():
    """List the passes of the default pipeline, in order."""
    from bnnc.report import pass_summary
    from passes import PIPELINE

    width = max((len(p.name) for p in PIPELINE), default=0)
    for i, p in enumerate(PIPELINE, start=1):
        click.echo(f"{i:2d}  {p.name:<{width}}  {pass_summary(p)}")


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Static shape of an input (.onnx only).")
@handle_errors
def inspect_cmd(model, as_json, input_shapes):
    """Per-layer report of MODEL (.onnx, compiled in memory, or .bnn)."""
    from bnnc.report import build_report, format_report

    report = build_report(model, list(input_shapes))
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(format_report(report))


@main.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "inputs", multiple=True, metavar="[NAME=]FILE.npy", help="Inputs to compare on [default: random normal].")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Batch of random inputs (dynamic-batch models) [default: 4].")
@click.option("--tolerance", type=float, default=1e-3, show_default=True, help="Max output error, relative to the largest reference magnitude.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Static shape of an input.")
@click.option("--per-layer", is_flag=True, help="Compare every intermediate value the model and bnnc share; name the first divergent layer.")
@click.option("--artifact", type=click.Path(dir_okay=False), help="Check this compiled artifact instead of compiling MODEL again.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def verify_cmd(model, inputs, samples, tolerance, input_shapes, per_layer, artifact, as_json):
    """Compile MODEL.onnx, run it next to onnxruntime and compare, layer by layer.

    Exit code 1 when the outputs disagree beyond the tolerance or an argmax differs."""
    from bnnc.loader import DYNAMIC_BATCH, check_feeds, load_model, parse_input_shapes
    from bnnc.verify import verify

    shapes = parse_input_shapes(list(input_shapes))
    declared = load_model(model, shapes)
    feeds = None
    if inputs:
        feeds = _read_feeds(inputs, [v.name for v in declared.graph.inputs])
        check_feeds(declared, feeds)
        if samples is not None:
            click.echo("note: --samples is ignored: the inputs given are the samples", err=True)
    elif samples is not None and not declared.meta.get(DYNAMIC_BATCH):
        batch = [int(v.shape[0]) for v in declared.graph.inputs if v.shape is not None and len(v.shape)]
        click.echo(f"note: the model's batch size is fixed at {batch[0] if batch else 1}; verifying one batch of "
                   "that many random samples (--samples sets the batch of dynamic-batch models only)", err=True)
    report = verify(model, feeds, samples or 4, tolerance, shapes, per_layer=per_layer, artifact=artifact)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        _print_verify(report)
    sys.exit(0 if report.ok else 1)


def _print_per_layer(report):
    click.echo("per layer (values of the input model that bnnc computes too, in graph order):")
    width = max([len(v.layer) for v in report.per_layer] + [5])
    for v in report.per_layer:
        if v.kind == "bits":
            what = f"{v.differing} of {v.bits} bits differ ({v.near_tie} near-tie)"
        else:
            what = f"max abs error {v.max_abs_error:.3g} (limit {v.limit:.3g})"
        mark = "  <- DIVERGES" if v.divergent else ""
        click.echo(f"  {v.layer:<{width}}  {v.tensor} ({v.kind}): {what}{mark}")
    first = report.first_divergent
    if first is None:
        click.echo("no layer diverges from onnxruntime")
    else:
        why = " (after near-tie flips upstream, which may explain it)" if first.after_near_tie else ""
        click.echo(f"first divergent layer: {first.layer} (value {first.tensor} of node {first.node}){why}")


def _print_verify(report):
    for name, o in report.outputs.items():
        agree = f", argmax agrees {o['argmax_agree']}/{o['samples']}" if "argmax_agree" in o else ""
        click.echo(f"output {name}: max abs error {o['max_abs_error']:.3g} (limit {o['limit']:.3g}){agree}")
    if report.layers:
        click.echo("binarized tensors (bnnc bits vs onnxruntime's sign of the same tensor):")
        for x in report.layers:
            real = x.differing - x.near_tie
            click.echo(f"  {x.tensor}: {x.differing} of {x.bits} bits differ ({x.near_tie} near-tie flips, {real} other)"
                       f"  -> {', '.join(x.readers)}")
    if report.per_layer is not None:
        _print_per_layer(report)
    click.echo("OK: bnnc agrees with onnxruntime" if report.ok else "MISMATCH: bnnc disagrees with onnxruntime")


@main.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Threads for both engines.")
@click.option("--repeat", type=click.IntRange(min=3), default=30, show_default=True, help="Interleaved timed runs of each.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size of the random input (dynamic-batch models).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Static shape of an input.")
@click.option("--profile", is_flag=True, help="Also time every kernel of bnnc's plan and list the slowest.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def bench_cmd(model, threads, repeat, warmup, batch, input_shapes, profile, as_json):
    """Time bnnc against onnxruntime on MODEL.onnx (same threads, interleaved, medians)."""
    from bnnc.bench import bench, format_bench
    from bnnc.loader import parse_input_shapes

    def progress(i, n):
        if not as_json and sys.stderr.isatty():
            click.echo(f"\r  run {i}/{n}", nl=False, err=True)

    r = bench(model, threads, repeat, warmup, parse_input_shapes(list(input_shapes)), batch, progress, profile)
    if not as_json and sys.stderr.isatty():
        click.echo("", err=True)
    click.echo(json.dumps(r, indent=1) if as_json else format_bench(r))


if __name__ == "__main__":
    main()

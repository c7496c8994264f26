"""The sweep's and the networks' results as short markdown tables, printed and written into
docs/performance.md between two marker comments (``--write-docs``), with the JSON report in
docs/bench/<machine kind>.json."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from .sweep import label, ratio_text

BEGIN = "<!-- bench.py --write-docs: begin -->"
END = "<!-- bench.py --write-docs: end -->"


def markdown(report) -> str:
    """The tables of ``report``'s ``sweep`` and ``networks`` sections (either may be absent)."""
    m = report["machine"]
    command = f"python scripts/bench.py {report.get('command', '')}".rstrip()
    lines = [textwrap.fill(f"Measured by `{command}`"
             + f" on {m['cpu']} ({m['cores']} cores), NumPy {m['numpy']}, "
             f"PyTorch {m.get('torch', '?')}, kernels `{m['kernels']}`, {report['date']}; "
             f"load average {_load(report['load_average_start'])} at the start and "
             f"{_load(report['load_average_end'])} at the end (other agents shared the "
             f"machine). Ratios are portacnn / PyTorch time (below 1: portacnn faster), "
             f"medians of interleaved runs; the sweep's times are the calling thread's CPU time "
             f"at 1 thread, the networks' the wall clock's. Full figures: "
             f"[bench/{report['machine_kind']}.json](bench/{report['machine_kind']}.json).",
                           width=96, break_on_hyphens=False), ""]
    if report.get("sweep"):
        lines += ["| convolution (N x C x H², F@k, stride, groups) | route | forward | "
                  "weight grad | input grad | portacnn GFLOP/s fwd / dW / dx |",
                  "|---|---|---|---|---|---|"]
        for row in report["sweep"]:
            if "skipped" in row:
                lines.append(f"| {label(row)} ({row['what']}) | skipped: {row['skipped']} "
                             "| | | | |")
                continue
            ops = ("forward", "weight_grad", "input_grad")
            lines.append(f"| {label(row)} ({row['what']}) | {row['route']} | "
                         + " | ".join(ratio_text(row[op]['ratio']) for op in ops) + " | "
                         + " / ".join(_num(row[op]['portacnn_gflops']) for op in ops) + " |")
        lines.append("")
    if report.get("networks"):
        threads = [t for t in report["networks_threads"]]
        sgemm = report.get("sgemm")
        if sgemm:
            sizes = ", ".join(f"{s}² {g:.1f}" for s, g in sgemm["by_size"].items())
            lines += [textwrap.fill(
                f"Single-thread SGEMM peak of this run: {sgemm['peak_gflops']:.1f} GFLOP/s "
                f"(NumPy float32 square products, best of a few: {sizes}). GFLOP/s count the "
                "multiply-adds of the convolutions and dense layers (x2; a training step does "
                "forward, weight and input gradient, the first layer no input gradient); "
                "\"SGEMM at its shapes\" is what NumPy's products of the row's own im2col "
                "shapes (batch folded into the columns) reach at 1 thread. A kernel doing fewer "
                "operations (Winograd, FFT) shows more GFLOP/s than it computes.",
                width=96, break_on_hyphens=False), ""]
        lines += ["| network, mode, batch | " + " | ".join(
            f"{t} thread{'s' if t > 1 else ''}: portacnn / PyTorch ms (ratio)" for t in threads)
            + " | 1 thread, by CPU time | 1 thread GFLOP/s portacnn / PyTorch (of SGEMM peak) "
            "| SGEMM at its shapes GFLOP/s | traced peak MiB | RSS growth MiB portacnn / "
            "PyTorch |", "|---|" + "---|" * (len(threads) + 5)]
        for row in report["networks"]:
            if "skipped" in row:
                lines.append(f"| {row['network']} | {row['skipped']} |" + " |" * (len(threads)
                                                                                 + 4))
                continue
            cells = []
            for t in threads:
                e = row["by_threads"][str(t)]
                cells.append(f"{e['portacnn_ms']['median']:.1f} / {e['torch_ms']['median']:.1f}"
                             f" ({e['ratio']['median']:.2f}x)")
            rss = row.get("rss_growth_mib")
            rss_text = ("n/a" if not rss else
                        f"{_num(rss['portacnn'])} / {_num(rss['torch'])}")
            one = row["by_threads"].get("1")
            cpu_text = "n/a" if one is None else f"{one['cpu_ratio']['median']:.2f}x"
            lines.append(f"| {row['network']} {row['mode']}, {row['batch']} | "
                         + " | ".join(cells) + f" | {cpu_text} | {_rate_text(one)} | "
                         f"{_num(row.get('sgemm_at_shapes_gflops'))} | "
                         f"{_num(row['peak_mib']['portacnn_traced'])} | {rss_text} |")
        lines.append("")
    return "\n".join(lines)


def _rate_text(entry):
    """"41.0 / 55.2 (0.36 / 0.48)": GFLOP/s of both sides and their fractions of the peak."""
    if not entry or "portacnn_gflops" not in entry:
        return "n/a"
    text = f"{entry['portacnn_gflops']:.1f} / {entry['torch_gflops']:.1f}"
    if "portacnn_of_peak" in entry:
        text += f" ({entry['portacnn_of_peak']:.2f} / {entry['torch_of_peak']:.2f})"
    return text


def _num(value):
    return "n/a" if value is None else f"{value:.1f}"


def _load(values):
    return " / ".join(f"{v:.2f}" for v in values)


def write_docs(report, root: Path):
    """Write the run into docs/bench/<kind>.json and its tables into docs/performance.md.

    The JSON keeps one file per machine kind: the sweep and networks go under
    ``shapes_and_networks``; the LeNet-5 sections (``machine``, ``args``, ``by_threads``, ...)
    are replaced only when this run made them, so a ``--sweep --networks`` run leaves the last
    LeNet-5 run in place. The tables go between BEGIN and END (a new section at the end of the
    page when the markers are missing)."""
    out = root / "docs" / "bench" / f"{report['machine_kind']}.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    if report["by_threads"]:
        data.update({key: report[key] for key in LENET_KEYS if key in report})
    data["shapes_and_networks"] = {key: report[key] for key in SECTION_KEYS if key in report}
    out.write_text(json.dumps(data, indent=2) + "\n")
    doc = root / "docs" / "performance.md"
    text = doc.read_text()
    block = f"{BEGIN}\n{markdown(report)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Shapes and networks\n\n" + block + "\n"
    doc.write_text(text)
    return out, doc


LENET_KEYS = ("machine", "args", "by_threads", "scaling", "memory_mib_after_epochs")
SECTION_KEYS = ("machine", "machine_kind", "command", "date", "load_average_start",
                "load_average_end", "sweep", "sgemm", "networks", "networks_threads")

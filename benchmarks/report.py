"""The markdown report (tables, targets, PNG plots) of a results JSON written by the suite.

    python -m benchmarks.report benchmarks/results/<stem>.json   # rewrites <stem>.md and plots

The report is a pure function of the JSON, so it can be rebuilt (or restyled) without rerunning.
"""

import argparse
import json
from pathlib import Path

from benchmarks.harness import Table, format_cell, markdown_table


def section_markdown(section: dict, plots_dir: str | None) -> str:
    """One section as markdown; plots are linked from ``plots_dir`` (None: not linked)."""
    lines = [f"## {section['title']}", "", section["about"], ""]
    for table in section["tables"]:
        lines += [f"**{table['title']}**", "", markdown_table(Table(**table)), ""]
    if section["targets"]:
        lines += ["**Targets**", "", "| target | goal | measured | met | why not |"]
        lines.append("|---|---|---|---|---|")
        for t in section["targets"]:
            met = "MET" if t["met"] else "**NOT MET**"
            lines.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {met} | {t['reason']} |")
        lines.append("")
    if plots_dir is not None:
        for plot in section["plots"]:
            lines += [f"![{plot['title']}]({plots_dir}/{plot['name']}.png)", ""]
    lines += [f"- {note}" for note in section["notes"]]
    if section.get("seconds"):
        lines += ["", f"*Section run time: {section['seconds']:.0f} s.*"]
    return "\n".join(lines) + "\n"


def draw(plot: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, points in plot["series"].items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    if plot["logx"]:
        ax.set_xscale("log", base=2)
    if plot["logy"]:
        ax.set_yscale("log")
    ax.set(title=plot["title"], xlabel=plot["xlabel"], ylabel=plot["ylabel"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def targets_summary(sections: list[dict]) -> str:
    rows = [t | {"section": s["title"]} for s in sections for t in s["targets"]]
    if not rows:
        return ""
    met = sum(t["met"] for t in rows)
    lines = [f"**{met} of {len(rows)} targets met.**", ""]
    lines += ["| section | target | measured | met |", "|---|---|---|---|"]
    for t in rows:
        lines.append(
            f"| {t['section']} | {t['name']} ({t['goal']}) | {t['measured']} | "
            f"{'MET' if t['met'] else '**NOT MET**'} |"
        )
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path, stem: str, *, plots: bool = True) -> Path:
    """Writes ``out/<stem>.md`` and the plots under ``out/<stem>/``; returns the markdown path."""
    meta, sections = results["meta"], results["sections"]
    plots_dir = out / stem
    if plots and any(s["plots"] for s in sections):
        plots_dir.mkdir(parents=True, exist_ok=True)
        for section in sections:
            for plot in section["plots"]:
                draw(plot, plots_dir / f"{plot['name']}.png")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    accelerator = meta["backend"] != "cpu"
    head = [
        f"# jaxdiv benchmarks: {meta['date']}, {meta['device']} ({meta['mode']} mode)",
        "",
        f"Machine: {meta['device_kind']} × {meta['device_count']} ({meta['backend']}), "
        f"{meta['cpu_count']} CPU cores ({meta['processor']}), Python {meta['python']}; "
        f"{versions}. Commit {meta['commit']}; the suite took {format_cell(meta['seconds'])} s.",
        "",
        "Times are `median [min–max]` in milliseconds over repeated calls after warm-up; every "
        "ratio compares two measurements taken in the same process. Peak memory of a JAX "
        "program is XLA's compiled-executable memory analysis (temporaries + arguments + "
        "outputs).",
        "",
        "## GPU/TPU",
        "",
        (
            f"This run is on an accelerator ({meta['device_kind']}): every section below ran on "
            "it (PyTorch peers stay on the CPU)."
            if accelerator
            else "This run had no accelerator (`jax.devices()` is CPU), so there are no "
            "GPU/TPU numbers in it. The same command run on a GPU or TPU machine writes its own "
            "`<date>-<device>.json` and report beside this one."
        ),
        "",
        "## Targets",
        "",
        targets_summary(sections),
    ]
    body = [section_markdown(s, plots_dir=stem if plots else None) for s in sections]
    path = out / f"{stem}.md"
    path.write_text("\n".join(head) + "\n" + "\n".join(body))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results JSON written by the suite")
    opts = parser.parse_args(argv)
    results = json.loads(opts.results.read_text())
    print(write(results, opts.results.parent, opts.results.stem))


if __name__ == "__main__":
    main()

"""The table of `bench/run --shared` (see `shared.py`): its rows, the
issue's targets for them, and the Markdown the run prints and the README
quotes. Each figure is the median (min–max) of the repetitions; (c) ÷ (a)
is the median of adjacent pairs' ratios where the run measured pairs.
"""
import statistics

MIB = 1 << 20

COLUMNS = ("a", "b", "c")
LABELS = {"a": "(a) one berth, no shared tier",
          "b": "(b) replica B, near cache empty",
          "c": "(c) replica B, near cache full"}


class Row:
    """A line of the table: a figure per column; (c) ÷ (a) where it means
    something; the issue's target, if it sets one."""

    def __init__(self, key, title, unit, ratio=False, target=None):
        self.key, self.title, self.unit = key, title, unit
        self.ratio, self.target = ratio, target

    def evaluate(self, figures):
        per = figures.get(self.key)
        if not per:
            return None
        values = {c: summary(v) for c, v in per.items()}
        a, c = med(values, "a"), med(values, "c")
        ratio = c / a if self.ratio and a and c is not None else None
        pairs = figures.get(self.key + "_ratio", {}).get("c")
        if self.ratio and pairs:
            # Measured in adjacent pairs: the median of their ratios.
            ratio = statistics.median(pairs)
        text, met = self.target(values, ratio) if self.target else ("", None)
        return {"key": self.key, "title": self.title, "unit": self.unit, "values": values,
                "c_vs_a": ratio, "target": text, "met": met}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def med(values, column):
    return values[column]["median"] if column in values else None


def near_cache_speed(_values, ratio):
    return "(c) ≥ 0.95× (a)", ratio is not None and ratio >= 0.95


def per_blob(values, _ratio):
    """The issue's: ≤ 1 request per near-cache miss, none for a hit; the
    worst repetition counts."""
    b, c = values.get("b"), values.get("c")
    ok = (b is None or b["max"] <= 1.0) and (c is None or c["max"] == 0)
    return "(b) ≤ 1, (c) = 0", ok


def none_for_hits(values, _ratio):
    c = values.get("c")
    return "(c) = 0", c is not None and c["max"] == 0


ROWS = [
    Row("blob_1", "blobs, 1 client (warm: the image 4 times over)", "GiB/s", True,
        near_cache_speed),
    Row("blob_n", "blobs, N clients", "GiB/s", True, near_cache_speed),
    Row("cold_1", "for comparison: (a) with an empty cache (a fill from the upstream), "
        "1 client", "GiB/s"),
    Row("blob_1_lb", "(b) blobs, 1 client, their manifest never asked of B (behind a "
        "load balancer)", "GiB/s"),
    Row("manifest_rps", "warm manifests by digest, 64 connections (wrk); (b): from an empty "
        "near cache", "req/s", True, near_cache_speed),
    Row("manifest_p99", "warm manifests by digest: p99", "ms", True),
    Row("manifest_first_rps", "manifests by digest, first reads only (each once, "
        "16 connections)", "req/s"),
    Row("store_per_blob_1", "object-store requests per blob, 1 client", "", False, per_blob),
    Row("store_per_blob_n", "object-store requests per blob, N clients at once (per blob, "
        "not per client)", "", False, per_blob),
    Row("store_per_blob_c", "object-store requests per pulled blob, 1 then N clients", "",
        False, per_blob),
    Row("store_per_blob_lb", "object-store requests per blob, 1 client, their manifest "
        "never asked of B", "", False, per_blob),
    Row("store_per_manifest_large", "object-store requests for the image's manifest by "
        "digest", ""),
    Row("store_per_manifest", "object-store requests per manifest by digest: (b) first "
        "reads, (c) per wrk request", "", False, none_for_hits),
    Row("store_per_manifest_wrk", "object-store requests per manifest request, (b) under wrk "
        "from an empty near cache", ""),
    Row("blob_1_cpu", "berth's CPU per GiB served, 1 client", "s/GiB", True),
    Row("cold_1_cpu", "berth's CPU per GiB served, (a) filling from the upstream, 1 client",
        "s/GiB"),
    Row("blob_n_cpu", "berth's CPU per GiB served, N clients", "s/GiB", True),
    Row("blob_1_garage_cpu", "Garage's CPU per GiB it sent, 1 client", "s/GiB"),
    Row("blob_n_garage_cpu", "Garage's CPU per GiB it sent, N clients (the image once)",
        "s/GiB"),
]


def cell(value, unit):
    if value is None:
        return "–"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "":
        return f"{value:.2f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def markdown(report):
    m, content, cpu = report["machine"], report["content"], report["cpu"]
    lines = [
        f"berth --shared profile, {report['date']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['cpu']}, Linux {m['kernel']}; load average {report['load_before']} before, "
        f"{report['load_after']} after",
        "",
        f"The run took {report['seconds']:.0f} s ({cpu['capacity_s']:.0f} core-seconds): the "
        f"cores were busy {cpu['busy_s']:.0f} core-seconds, {cpu['this_run_s']:.0f} of them "
        f"this run's processes, {cpu['others_s']:.0f} other processes'; the hypervisor "
        f"took {cpu['steal_s']:.0f} (steal).",
        "",
        f"{report['garage']['version'] or 'Garage'}, one node on loopback. Large image "
        f"{content['large_image_bytes'] / MIB:.0f} MiB ({content['blobs']} blobs), "
        f"{content['small_images']} small images, N = {content['clients']} clients, "
        f"{content['repetitions']} repetition(s): median (min–max). Loopback ceiling "
        f"{report['loopback_ceiling_gibps']:.2f} GiB/s. The store's own ceiling (curl's GET "
        f"of the largest layer's object straight from Garage, presigned): "
        f"{report['store_ceiling']['gibps']:.2f} GiB/s, Garage using "
        f"{report['store_ceiling']['garage_cpu_s_per_gib']:.2f} s of CPU per GiB.",
        "",
        "| figure | unit | " + " | ".join(LABELS[c] for c in COLUMNS) +
        " | (c) ÷ (a) | target | met |",
        "|---|---|" + "---|" * len(COLUMNS) + "---|---|---|",
    ]
    for row in report["rows"]:
        cells = []
        for c in COLUMNS:
            v = row["values"].get(c)
            if v is None:
                cells.append("")
            elif v["min"] == v["max"]:
                cells.append(cell(v["median"], row["unit"]))
            else:
                cells.append(f"{cell(v['median'], row['unit'])} "
                             f"({cell(v['min'], row['unit'])}–{cell(v['max'], row['unit'])})")
        ratio = f"{row['c_vs_a']:.2f}" if row["c_vs_a"] is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {row['title']} | {row['unit']} | " + " | ".join(cells) +
                     f" | {ratio} | {row['target']} | {met} |")
    checks = report["checks"]
    kinds = {}
    for w in report["windows"]:
        if w["name"].startswith("(b)"):
            for k, n in w["kinds"].items():
                kinds[k] = kinds.get(k, 0) + n
    lines += ["",
              "Object-store requests in (b), by kind, over all repetitions: " +
              (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"),
              "berth_objectstore_requests_total equal to Garage's log in every window: " +
              ("yes" if checks["berth_count_agrees_with_garage"] else "**no** (see JSON)"),
              f"Every answer from berth right: {'yes' if checks['digests_ok'] else 'NO'}"]
    for w in checks["wrong_answers"][:10]:
        lines.append(f"- wrong: {w}")
    return "\n".join(lines)

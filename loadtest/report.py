"""The load test's report as text (each figure with its definition) and as a PNG plot over time of
waiting calls, service level and occupancy per site, with the warm-up and any island period
shaded. The JSON report is the dictionary both are rendered from."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pct(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{100 * value:.1f} %"


def _num(value: object, unit: str = "", digits: int = 2) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def render_text(report: dict[str, Any]) -> str:
    s, m, y, sy = report["scenario"], report["measured"], report["yardstick"], report["system"]
    defs = report["definitions"]
    lo, hi = report["window_s"]
    lines = [
        f"load test {s['name']} ({s['mode']}, {s.get('calls', 'signalling')}): "
        f"{s['agents']} agents at {len(s['sites'])} sites "
        f"on {s['nodes']} nodes, {s['calls_per_s']:g} calls/s for {s['duration_s']:g} s, "
        f"measured over arrivals in [{lo:g}, {hi:g}) s; T = {s['service_level_s']:g} s"
        + (f"; WAN {s['wan_delay_ms']:g} ms each way" if s["wan_delay_ms"] else ""),
    ]
    for island in report["islands"]:
        lines.append(
            f"island: {', '.join(island['island'])} cut off from {island['from_s']:.1f} s "
            f"to {island['to_s']:.1f} s"
        )
    pooled = y["pooled"] if y["compare_with"] == "pooled" else None
    predicted_sl = pooled["service_level"] if pooled else y["siloed_service_level"]
    corrected_sl = (
        pooled["corrected_service_level"] if pooled else y["siloed_corrected_service_level"]
    )
    lines += [
        "",
        f"{'measured':28} {'value':>12}   corrected for Cs^2 {y['handle_scv']:g} "
        f"({y['compare_with']})",
        f"  {'service level':26} {_pct(m['service_level']):>12}   {_pct(corrected_sl)}"
        f"   ({y['model']} {_pct(predicted_sl)}; Erlang C "
        f"{_pct(y['pooled']['erlang_c_service_level'])} pooled)",
        f"  {'ASA':26} {_num(m['asa_s'], ' s'):>12}   "
        + (
            f"{_num(pooled['corrected_asa_s'], ' s')}   "
            f"({y['model']} {_num(pooled['asa_s'], ' s')})"
            if pooled
            else "-"
        ),
        f"  {'AHT':26} {_num(m['aht_s'], ' s'):>12}",
        f"  {'abandonment':26} {_pct(m['abandonment']):>12}   "
        + (_pct(pooled["abandonment"]) if pooled else "-"),
        f"  {'occupancy':26} {_pct(m['occupancy']):>12}   "
        + (_pct(pooled["occupancy"]) if pooled else "-"),
        f"  {'longest wait':26} {_num(m['longest_wait_s'], ' s'):>12}",
        f"  calls: {m['offered']} offered, {m['answered']} answered, {m['abandoned']} abandoned, "
        f"{m['other_outcomes']} other outcomes",
        "",
        f"model inputs: rate = {y.get('rate_per_s', 0):g}/s (planned "
        f"{y.get('planned_rate_per_s', 0):g}/s), "
        f"h = {y['handle_s']:g} s (planned {y['planned_handle_s']:g} s), "
        f"T' = {y['threshold_s']:g} s, patience {y['patience_s'] or 'none'}, busy time Cs^2 "
        f"{y['handle_scv']:g} (measured {_num(y['measured_handle_scv'], '', 3)}); {y['note']}",
        f"pooled prediction: SL {_pct(y['pooled']['corrected_service_level'])} corrected, "
        f"{_pct(y['pooled']['service_level'])} {y['model']}; siloed prediction: SL "
        f"{_pct(y['siloed_corrected_service_level'])} corrected, "
        f"{_pct(y['siloed_service_level'])} {y['model']} ("
        + ", ".join(f"{k} {_pct(v['corrected_service_level'])}" for k, v in y["siloed"].items())
        + ")",
        "",
        f"service level against T (measured; pooled: corrected, {y['model']}, Erlang C; "
        "siloed: corrected, " + f"{y['model']}):",
        *(
            f"  T = {c['t_s']:4g} s   {_pct(c['measured']):>8}   {_pct(c['pooled_corrected']):>8}"
            f"   {_pct(c['pooled']):>8}   {_pct(c['pooled_erlang_c']):>8}   "
            f"{_pct(c['siloed_corrected']):>8}   {_pct(c['siloed']):>8}"
            for c in y["curve"]
        ),
        "",
        "per site (by the callers' entry site; occupancy by the agents' site):",
    ]
    for site, f in report["per_site"].items():
        lines.append(
            f"  {site:12} agents {f['agents']:4}  offered {f['offered']:5}  SL "
            f"{_pct(f['service_level']):>8}  ASA {_num(f['asa_s'], ' s'):>9}  abandonment "
            f"{_pct(f['abandonment']):>7}  occupancy {_pct(f['occupancy']):>7}  longest "
            f"{_num(f['longest_wait_s'], ' s')}"
        )
    d, o = sy["routing_decision_ms"], sy["offer_to_answer_ms"]
    lines += [
        "",
        "system:",
        f"  routing decision       mean {_num(d['mean_ms'], ' ms', 3)}  p50 "
        f"{_num(d['p50_ms'], ' ms', 3)}  p99 {_num(d['p99_ms'], ' ms', 3)}  "
        f"({int(d['count'] or 0)} decisions)",
        f"  offer to answer        mean {_num(o['mean'], ' ms', 0)}  p50 {_num(o['p50'], ' ms', 0)}"
        f"  p99 {_num(o['p99'], ' ms', 0)}",
        f"  arrival to first offer p50 {_num(sy['arrival_to_offer_ms']['p50'], ' ms', 0)}  p90 "
        f"{_num(sy['arrival_to_offer_ms']['p90'], ' ms', 0)}",
        f"  offers {sy['offers']}, refused {sy['refused_offers']}, timed out "
        f"{sy['offer_timeouts']}, failed {sy['offer_failures']}",
        f"  calls crossing sites   {_pct(sy['cross_site_share'])}",
        f"  lost calls             {sy['lost_calls']}",
        f"  double bookings        {sy['double_bookings']} (talking on two calls; legs "
        f"overlapping from the offer on: {sy['overlapping_offers']}; client view: "
        f"{sy['client_double_offers']} offers while on a call)",
        f"  calls refused {sy['calls_refused']}, callers who hung up on a silent line "
        f"{sy['callers_gave_up']}, client errors {sy['client_errors']}",
        f"  peak talking calls     {sy.get('peak_talking_calls', '-')}",
        *_audio_lines(sy.get("audio")),
        "",
        "definitions:",
        *(f"  {name}: {text}" for name, text in defs.items()),
        "",
        "checks: "
        + ("passed" if report["checks"]["passed"] else "FAILED")
        + f" (lost calls {report['checks']['lost_calls']}, "
        f"double bookings {report['checks']['double_bookings']}"
        + (
            f", calls without audio both ways {report['checks']['audio_failed']}"
            if "audio_failed" in report["checks"]
            else ""
        )
        + ")",
    ]
    return "\n".join(lines) + "\n"


def _audio_lines(audio: dict[str, Any] | None) -> list[str]:
    """Media mode: the audio check of the answered calls, and a few failures."""
    if audio is None:
        return []
    return [
        f"  audio (media mode)     {audio['answered']} answered, {audio['verified_both_ways']} "
        f"verified both ways, {audio['failed']} failed (answer to verified p50 "
        f"{_num(audio['answer_to_verified_s']['p50'], ' s')}, max "
        f"{_num(audio['answer_to_verified_s']['max'], ' s')})",
        *(f"    {f['call']}: {f['problem']}" for f in audio["failed_examples"]),
    ]


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Waiting calls, service level (per bin of arrivals) and occupancy per site over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    t = timeline["t_s"]
    figure, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for site, series in timeline["waiting"].items():
        axes[0].plot(t, series, label=site)
    bin_s = timeline["bin_s"]
    for site, series in timeline["service_level"].items():
        xs = [bin_s * (i + 0.5) for i, v in enumerate(series) if v is not None]
        ys = [100 * v for v in series if v is not None]
        axes[1].plot(xs, ys, marker=".", label=site)
    for site, series in timeline["occupancy"].items():
        points = [(x, 100 * v) for x, v in zip(t, series, strict=True) if v is not None]
        axes[2].plot([p[0] for p in points], [p[1] for p in points], label=site)
    axes[0].set_ylabel("waiting calls")
    axes[1].set_ylabel(f"service level % (T={report['scenario']['service_level_s']:g} s)")
    axes[1].set_ylim(-2, 102)
    axes[2].set_ylabel("occupancy %")
    axes[2].set_ylim(-2, 102)
    axes[2].set_xlabel("seconds from the start of traffic")
    warmup = report["window_s"][0]
    for ax in axes:
        if warmup:
            ax.axvspan(0, warmup, color="grey", alpha=0.15)
        for island in report["islands"]:
            ax.axvspan(island["from_s"], island["to_s"], color="red", alpha=0.15)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    s = report["scenario"]
    title = f"{s['name']} ({s['mode']}): grey = warm-up"
    if report["islands"]:
        title += (
            ", red = island ("
            + ", ".join("+".join(i["island"]) for i in report["islands"])
            + " cut off)"
        )
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)

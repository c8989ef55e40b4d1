"""Table cells over seeds, shared by the experiments' scripts (each puts examples/paper/ on sys.path)."""
import statistics


def seed_cell(values: list[float], digits: int) -> str:
    """'a / b / c (mean ± std)' over seeds ('–' for a missing seed; mean ± std over the seeds present)."""
    got = [v for v in values if v == v]
    text = " / ".join("–" if v != v else f"{v:,.{digits}f}" for v in values)
    if len(got) >= 2:
        text += f" ({statistics.mean(got):,.{digits}f} ± {statistics.stdev(got):,.{digits}f})"
    return text

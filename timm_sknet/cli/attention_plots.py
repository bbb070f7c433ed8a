"""PNG figures of kernel selection in the style of the SKNet paper's Figs. 3 and 4 (matplotlib, Agg, no pyplot).

Figure sizes are fixed so the files are predictable: ``units.png`` 800 x 400 pixels, ``channels.png``
800 x 300 per unit, ``classes.png`` 1000 x 300 per unit.
"""
import io
from typing import Sequence

import numpy as np

from ..io.errors import require_module

DPI = 100
UNITS_FIGSIZE = (8, 4)
CHANNELS_PANEL_FIGSIZE = (8, 3)
CLASSES_PANEL_FIGSIZE = (10, 3)


def require_matplotlib() -> None:
    """Fail early, before any model runs, when the optional ``plots`` extra is missing."""
    require_module('matplotlib', 'plots')


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=DPI)
    return buffer.getvalue()


def plot_unit_differences(
        unit_names: Sequence[str],
        scale_labels: Sequence[str],
        means: np.ndarray,
        stds: np.ndarray,
        difference_label: str,
        title: str,
) -> bytes:
    """Fig. 3 (right / c): mean attention difference of every unit, one line per scale, +- one std shaded.

    ``means`` and ``stds`` are (units, scales).
    """
    fig = _figure(*UNITS_FIGSIZE)
    ax = fig.add_subplot()
    x = np.arange(len(unit_names))
    for s, label in enumerate(scale_labels):
        line, = ax.plot(x, means[:, s], marker='o', markersize=3, label=label)
        ax.fill_between(x, means[:, s] - stds[:, s], means[:, s] + stds[:, s], color=line.get_color(), alpha=0.15)
    ax.axhline(0, color='0.5', linewidth=0.8)
    ax.set_xticks(x, unit_names, rotation=90, fontsize=7)
    ax.set_xlabel('SK unit (shaded: mean +- 1 std over images)', fontsize=8)
    ax.set_ylabel(f'mean attention difference\n({difference_label})')
    ax.legend(title='object size')
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def plot_channel_attention(
        unit_names: Sequence[str],
        scale_labels: Sequence[str],
        attention: Sequence[np.ndarray],
        kernel_sizes: Sequence[int],
        group: int,
        title: str,
) -> bytes:
    """Fig. 3 (left): attention of the largest kernel per channel, averaged over ``group`` successive channels.

    ``attention`` holds one (scales, channels) array per unit; ``kernel_sizes`` that kernel's size per unit.
    """
    fig = _figure(CHANNELS_PANEL_FIGSIZE[0], CHANNELS_PANEL_FIGSIZE[1] * len(unit_names))
    axes = fig.subplots(len(unit_names), 1, squeeze=False)[:, 0]
    for ax, name, values, kernel in zip(axes, unit_names, attention, kernel_sizes):
        starts = np.arange(0, values.shape[1], group)
        grouped = np.add.reduceat(values, starts, axis=1) / np.diff(np.append(starts, values.shape[1]))
        for s, label in enumerate(scale_labels):
            ax.plot(starts, grouped[s], marker='o', markersize=2, linewidth=1, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f'channel index (mean of {group} successive channels)')
        ax.set_ylabel(f'attention of {kernel}x{kernel}')
        ax.legend(title='object size', fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def plot_class_differences(
        unit_names: Sequence[str],
        scale_labels: Sequence[str],
        class_means: Sequence[np.ndarray],
        difference_label: str,
        title: str,
) -> bytes:
    """Fig. 4: mean attention difference of each class's images, per unit, one line per scale.

    ``class_means`` holds one (classes, scales) array per unit.
    """
    fig = _figure(CLASSES_PANEL_FIGSIZE[0], CLASSES_PANEL_FIGSIZE[1] * len(unit_names))
    axes = fig.subplots(len(unit_names), 1, squeeze=False)[:, 0]
    for ax, name, means in zip(axes, unit_names, class_means):
        classes = np.arange(means.shape[0])
        for s, label in enumerate(scale_labels):
            ax.plot(classes, means[:, s], linewidth=0.8, marker='.' if len(classes) < 50 else None, label=label)
        ax.axhline(0, color='0.5', linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel('class index')
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f'mean attention difference\n({difference_label})', fontsize=8)
        ax.legend(title='object size', fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return _png(fig)

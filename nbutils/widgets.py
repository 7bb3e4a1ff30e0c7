"""ipywidgets explorers. Each also leaves a static figure, so a headless (papermill) run keeps a picture.

Other modules append their widgets at the END of this file.
"""
from __future__ import annotations

import matplotlib.pyplot as plt


def sample_slider(dataset, start: int = 0, static: bool = True):
    """A slider over the samples of a Face300W (crop as the network sees it + landmarks).

    With `static` the starting sample is also drawn as an ordinary figure first (what a headless
    run keeps). Returns the widget box (already displayed).
    """
    import ipywidgets as widgets
    from IPython.display import display

    from nbutils.plots import sample_view, show_image

    def draw(index: int):
        sample = dataset[index]
        record = dataset.records[sample["index"]]
        crop, points = sample_view(sample)
        fig, ax = plt.subplots(figsize=(3.6, 3.6))
        show_image(ax, crop, points, title=f"{dataset.subset} #{index}: {record.image_path.name}")
        return fig

    start = max(0, min(int(start), len(dataset) - 1))
    if static:
        display(draw(start))
        plt.close("all")
    slider = widgets.IntSlider(value=start, min=0, max=len(dataset) - 1, description="sample",
                               continuous_update=False)
    output = widgets.Output()

    def update(change=None):
        with output:
            output.clear_output(wait=True)
            figure = draw(slider.value)
            display(figure)
            plt.close(figure)

    slider.observe(update, names="value")
    update()
    box = widgets.VBox([slider, output])
    display(box)
    return box


def error_browser(exploration, landmark: int = 36, static: bool = True):
    """Browse a run's faces (nbutils.explore.Exploration) from the largest NME down.

    Controls: pose bucket, rank within it (0 = worst face) and landmark whose heatmap is shown. Each
    view is explore.face_figure: prediction vs ground truth coloured by point error, plus the heatmap.
    With `static` the worst face is first drawn as an ordinary figure (what a headless run keeps).
    Returns the widget box (already displayed).
    """
    import ipywidgets as widgets
    from IPython.display import display

    from nbutils.explore import POSE_BUCKETS, face_figure

    if static:
        display(face_figure(exploration, int(exploration.order()[0]), landmark))
        plt.close("all")
    buckets = ["all"] + [name for name, _, _ in POSE_BUCKETS if (exploration.pose == name).any()]
    pose = widgets.Dropdown(options=buckets, value="all", description="pose")
    rank = widgets.IntSlider(value=0, min=0, max=len(exploration) - 1, description="rank (0 = worst)",
                             continuous_update=False, style={"description_width": "initial"})
    point = widgets.IntSlider(value=int(landmark), min=0, max=exploration.point_errors.shape[1] - 1,
                              description="landmark", continuous_update=False)
    output = widgets.Output()

    def update(change=None):
        order = exploration.order(pose.value)
        rank.max = len(order) - 1
        with output:
            output.clear_output(wait=True)
            figure = face_figure(exploration, int(order[min(rank.value, len(order) - 1)]), point.value)
            display(figure)
            plt.close(figure)

    for control in (pose, rank, point):
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([pose, rank, point]), output])
    display(box)
    return box

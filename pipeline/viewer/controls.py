"""The viewer's GUI controls: built once on the page, each wired to a `Viewer` method."""

from __future__ import annotations

from pipeline.evaluate.protocol import LEVELS


class ViewerControls:
    """The controls part of `Viewer` (it sets the `gui_*` handles the rest of the viewer and tests read)."""

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui, sc = self.server.gui, self.scene
        gui.configure_theme(control_width="large")
        gui.add_markdown(f"**{sc.name}**: {sc.T} frames, {sc.H}x{sc.W}; points from {sc.describe_points()}")
        self._time_controls(gui)
        self._point_controls(gui)
        self._query_controls(gui)
        self._annotation_buttons(gui)
        self._object_controls(gui)
        self.gui_save = gui.add_button("save view")
        self.gui_saved = gui.add_markdown("")
        self._connect_controls()

    def _time_controls(self, gui) -> None:
        sc = self.scene
        with gui.add_folder("Time"):
            self.gui_frame = gui.add_slider("frame", min=0, max=max(sc.T - 1, 1), step=1, initial_value=self.t,
                                            disabled=sc.T < 2)
            self.gui_play = gui.add_checkbox("play", initial_value=False)
            self.gui_fps = gui.add_number("fps", initial_value=float(min(sc.fps, 30.0)), min=0.5, max=60.0, step=0.5)

    def _point_controls(self, gui) -> None:
        with gui.add_folder("Points"):
            self.gui_conf = gui.add_slider("hide lowest confidence %", min=0, max=95, step=5, initial_value=0)
            self.gui_size = gui.add_slider("point size", min=self.point_size / 4, max=self.point_size * 4,
                                           step=self.point_size / 8, initial_value=self.point_size)
            self.gui_count = gui.add_markdown("")

    def _query_controls(self, gui) -> None:
        with gui.add_folder("Query"):
            self.gui_text = gui.add_text("text", initial_value="")
            self.gui_level = gui.add_dropdown("level", options=("auto", *LEVELS), initial_value="auto")
            self.gui_ts = gui.add_checkbox("time-sensitive", initial_value=False)
            self.gui_colour = gui.add_dropdown("colour", options=("relevancy", "mask", "rgb"), initial_value="relevancy")
            self.gui_clear = gui.add_button("clear query")
            self.gui_progress = gui.add_progress_bar(0.0, visible=False)
            self.gui_status = gui.add_markdown("type a text and press Enter" if self.engine else
                                               "no language field loaded")

    def _annotation_buttons(self, gui) -> None:
        labels, states = self.scene.annotation_queries()
        self.states = states
        if labels or states:
            with gui.add_folder("Annotation queries"):
                for q in labels:
                    gui.add_button(q).on_click(lambda _e, q=q: self.set_query(q, time_sensitive=False))
                for q in states:
                    gui.add_button(q, icon=None).on_click(lambda _e, q=q: self.set_query(q, time_sensitive=True))

    def _object_controls(self, gui) -> None:
        with gui.add_folder("Objects"):
            if self.objects is None:
                gui.add_markdown("no objects3d.parquet (the GPT4Scene stage has not run for this scene)")
                self.gui_boxes = None
            else:
                gui.add_markdown(f"{len(self.objects)} objects from objects3d.parquet")
                self.gui_boxes = gui.add_checkbox("show boxes", initial_value=True)
                self.gui_boxes.on_update(lambda _e: self._set(show_boxes=self.gui_boxes.value))

    def _connect_controls(self) -> None:
        self.gui_frame.on_update(lambda _e: self.show_frame(int(self.gui_frame.value)))
        self.gui_conf.on_update(lambda _e: self._set(conf_drop=float(self.gui_conf.value)))
        self.gui_size.on_update(lambda _e: self._set(point_size=float(self.gui_size.value)))
        self.gui_text.on_update(lambda _e: self._set(text=self.gui_text.value.strip()))
        self.gui_level.on_update(lambda _e: self._set(level=self.gui_level.value))
        self.gui_ts.on_update(lambda _e: self._set(time_sensitive=bool(self.gui_ts.value)))
        self.gui_colour.on_update(lambda _e: self._set(colour_mode=self.gui_colour.value))
        self.gui_clear.on_click(lambda _e: self.set_query(""))
        self.gui_save.on_click(lambda e: self._save_clicked(e.client))

    def _set(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self, k, v)
            self.show_frame(self.t)

    def set_query(self, text: str, *, time_sensitive: bool | None = None, level: str | None = None) -> None:
        """What typing `text` in the box (and ticking the checkbox, picking the level) does."""
        with self._lock:
            if time_sensitive is not None:
                self.time_sensitive = time_sensitive
                self.gui_ts.value = time_sensitive
            if level is not None:
                self.level = level
                self.gui_level.value = level
            self.text = text
            if self.gui_text.value != text:
                self.gui_text.value = text  # runs the update, which shows the frame
            else:
                self.show_frame(self.t)

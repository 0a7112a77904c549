"""Service lifecycle around the pipeline: signals, systemd notify and watchdog, HTTP, reload.

SIGTERM/SIGINT: finish the batch in flight, publish ``offline``, flush MQTT (<= 5 s), exit 0.
SIGHUP: re-read the config; live keys change at once, the rest is logged as needing a
restart; an invalid file is rejected with the reason and the daemon keeps running.
"""

import logging
import signal
import threading
import time

from daemon import config as config_module
from daemon.notify import Notifier
from daemon.pipeline import Pipeline

log = logging.getLogger(__name__)


class Service(object):
    """Runs one Pipeline as a long-lived service."""

    def __init__(self, config, config_path, notifier=None):
        self.config_path = config_path
        self.pipeline = Pipeline(config)
        self.notifier = notifier or Notifier()
        self.web = None
        self._watchdog_thread = None

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum, _frame):
        log.info("signal %d: stopping", signum)
        self.pipeline.stop()

    def _on_reload_signal(self, signum, _frame):
        log.info("SIGHUP: reloading %s", self.config_path)
        self.pipeline.request_reload(self.reload)

    def reload(self):
        """Load the config file again and apply it; keep the old one when it is invalid."""
        try:
            new = config_module.load(self.config_path)
        except config_module.ConfigError as error:
            log.error("reload rejected, still running on the previous config: %s", "; ".join(error.errors))
            self.notifier.status("reload rejected: %s" % error.errors[0])
            return False
        live, restart = self.pipeline.apply_config(new)
        if live:
            log.info("reload applied: %s", ", ".join(live))
        if restart:
            log.warning("reload: these keys need a restart to change: %s", ", ".join(restart))
        if not live and not restart:
            log.info("reload: nothing changed")
        return True

    def open(self):
        """Load backend, connect MQTT, open the source, start HTTP; then tell systemd we are ready."""
        self.pipeline.open()
        settings = self.pipeline.config.http
        if settings.enabled:
            from daemon import web

            self.web = web.WebServer(settings, self.pipeline, self.config_path).start()
        self.notifier.ready(self.pipeline.describe())
        if self.notifier.watchdog_interval:
            self._watchdog_thread = threading.Thread(target=self._watchdog_loop, name="watchdog")
            self._watchdog_thread.daemon = True
            self._watchdog_thread.start()
        return self

    def _watchdog_loop(self):
        """Ping while the loop works (healthy, or reopening its source), so a stuck pipeline lets
        systemd's WatchdogSec expire but a camera that is away does not cause restarts."""
        interval = self.notifier.watchdog_interval
        last_status = 0.0
        while not self.pipeline.wait_stopped(interval):
            healthy, detail = self.pipeline.health()
            if detail["alive"]:
                self.notifier.watchdog()
            else:
                log.warning("unhealthy, withholding the watchdog ping: %s", detail)
            if time.monotonic() - last_status > 10:
                last_status = time.monotonic()
                self.notifier.status(
                    "%s: %d frames, source %s, mqtt %s"
                    % (
                        "ok" if healthy else "UNHEALTHY",
                        detail["frames_out"],
                        detail["source_state"],
                        "connected" if detail["mqtt_connected"] else "disconnected",
                    )
                )

    def run(self, max_frames=None):
        try:
            self.pipeline.run(max_frames=max_frames)
        finally:
            self.close()

    def close(self):
        started = time.monotonic()
        self.notifier.stopping()
        self.pipeline.stop()
        if self.web is not None:
            self.web.stop()
        self.pipeline.close()
        self.notifier.close()
        log.info("shut down in %.2f s", time.monotonic() - started)

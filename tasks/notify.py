"""Slack notification task: one thread per flow run; Slack trouble never fails the flow."""

from __future__ import annotations

from collections.abc import Mapping

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fleetops.clients.slack import Notifier, SlackClient
from fleetops.discovery import load_settings
from fleetops.domain.inventory import InventoryRecord
from fleetops.domain.report import DiscoveryReport, slack_details, slack_headline


def run_url(flow_run_id: str | None, fallback: str | None = None) -> str | None:
    """The flow run's page in the Prefect UI: ``FLEETOPS_UI_URL`` first, else Prefect's own."""
    settings = load_settings()
    if settings.ui_url is not None and flow_run_id:
        return f"{str(settings.ui_url).rstrip('/')}/runs/flow-run/{flow_run_id}"
    return fallback


@task(name="notify-slack", cache_policy=NO_CACHE, persist_result=False, retries=0)
def notify_discovery_task(
    report: DiscoveryReport,
    records: Mapping[str, InventoryRecord],
    flow_run_url: str | None,
) -> bool:
    """Post the run's thread: the summary with the flow run link, then one reply per section.

    Returns whether the whole thread was posted. Never raises: failures are logged (redacted).
    """
    logger = get_run_logger()
    try:
        client = SlackClient.from_settings(load_settings().slack)
    except Exception as exc:  # a broken Slack setting must not fail discovery either
        logger.warning("Slack is not usable (%s); no notification", type(exc).__name__)
        return False
    if client is None:
        logger.info("no Slack token configured (FLEETOPS_SLACK_TOKEN); no notification")
        return False
    notifier = Notifier(client, run_url=flow_run_url)
    ok = notifier.start(slack_headline(report, run_url=flow_run_url))
    if ok:
        for text in slack_details(report, records=records):
            ok = notifier.reply(text) and ok
    if notifier.failures:
        logger.warning(
            "Slack notification incomplete (%d failed calls); the run goes on",
            len(notifier.failures),
        )
    return ok

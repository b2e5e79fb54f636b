"""Drives Tally through Cisco's own `dnacentersdk`, unchanged, as Catalyst Center automation would.

Environment: TALLY_BASE (Tally's root URL), TALLY_USER, TALLY_PASSWORD (a Tally API token),
DNAC_VERSION (the SDK's API version), TRANSFER_COUNT (devices to move). Prints one JSON object on
stdout for e2e/tests/catalyst.rs to assert on; any SDK error ends the script non-zero.
"""

import json
import os
import sys
import time

from dnacentersdk import DNACenterAPI


def plain(obj):
    # The SDK answers MyDict objects; JSON round-trip gives plain data to print.
    return json.loads(json.dumps(obj))


def main():
    api = DNACenterAPI(
        username=os.environ["TALLY_USER"],
        password=os.environ["TALLY_PASSWORD"],
        base_url=os.environ["TALLY_BASE"],
        version=os.environ.get("DNAC_VERSION", "3.1.6.0"),
        verify=False,
    )
    lic = api.licenses
    out = {"sdk_version": __import__("dnacentersdk").__version__}

    out["count"] = plain(lic.device_count_details())["response"]

    items, pages, page = [], 0, 1
    while True:
        resp = plain(lic.device_license_summary(page_number=page, order="asc", limit=500))
        batch = resp["response"]
        pages += 1
        items.extend(batch)
        if len(batch) < 500:
            break
        page += 1
    out["pages"] = pages
    out["summary_total"] = len(items)
    out["unique_ids"] = len({i["device_uuid"] for i in items})
    out["first_item"] = items[0] if items else None

    smart = plain(lic.smart_account_details())["response"]
    out["smart_accounts"] = smart
    sa = smart[0]["id"]
    vas = plain(lic.virtual_account_details(smart_account_id=sa))
    out["virtual_accounts"] = vas
    names = [v["virtual_account_name"] for v in vas["virtual_account_details"]]

    # Move a few devices to another virtual account of the same smart account.
    target = names[-1]
    # Only devices whose levels the target already uses: its pools hold those licenses.
    levels = {
        (i["network_license"], i["dna_level"])
        for i in items
        if i["virtual_account_name"] == target
    }
    movers = [
        i["device_uuid"]
        for i in items
        if i["virtual_account_name"] != target
        and (i["network_license"], i["dna_level"]) in levels
    ]
    movers = movers[: int(os.environ.get("TRANSFER_COUNT", "5"))]
    started = plain(
        lic.change_virtual_account(
            smart_account_id=sa, virtual_account_name=target, device_uuids=movers
        )
    )
    task_id = started["response"]["taskId"]
    task = None
    deadline = time.time() + 60
    while time.time() < deadline:
        task = plain(api.task.get_task_by_id(task_id=task_id))["response"]
        if "endTime" in task:
            break
        time.sleep(0.5)
    out["transfer"] = {
        "smart_account": sa,
        "target": target,
        "devices": movers,
        "started": started,
        "task": task,
    }
    out["network_summary"] = plain(lic.retrieves_summary_of_network_device_licenses())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

"""The shared mailbench (its path the first argument, its own arguments after), with one more
`imap` op: `fetch_tb_sync`, the folder's first sync as Thunderbird does it (the headers it lists,
for every message). mailbench is shared by every project and stays as it is: the op is added here.

    python bench/mailbench_sync.py ../shared/bench/mailbench.py imap ... --ops ...,fetch_tb_sync
"""
from __future__ import annotations

import importlib.util
import sys

TB_SYNC = ("UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID "
           "Priority X-Priority References Newsgroups In-Reply-To Content-Type)])")


def main() -> int:
    spec = importlib.util.spec_from_file_location("mailbench", sys.argv[1])
    mailbench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mailbench)
    mailbench.IMAP_OPS.append(("fetch_tb_sync", TB_SYNC))  # "fetch…": counted as a FETCH (responses, MB/s)
    return mailbench.main(sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())

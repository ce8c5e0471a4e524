"""Request/reply between two processes, with SPIFFE identities and per-method authorization.

Run it from a checkout: ``python examples/reqrep.py`` (exit status 0 when every
workload did what the policy says, 1 otherwise).

What happens, all on this machine and within a few seconds:

* a dev CA for ``example.org``, a ``dir://`` registry and one policy file are
  made in a temporary directory (``Stage.build``);
* ``payment`` (``spiffe://example.org/ns/shop/sa/payment``) binds a REP socket
  for service ``payment`` and serves ``charge`` and ``status``, printing the
  caller's authenticated SPIFFE ID for each request;
* ``checkout`` connects a REQ socket to the service by name and calls
  ``charge`` (answered), ``refund`` (refused by the server: rule
  ``payment-callers`` allows checkout only ``charge`` and ``status``, so the
  client gets ``zmeshlib.PermissionDenied``) and ``status`` (answered).

Each workload is its own OS process. The workload code is in
``zmeshlib/cli/demo.py`` (``payment_server``, ``checkout_client``), so that
``zmesh demo`` runs exactly this code too; docs/examples.md walks through it.
"""

import sys

from zmeshlib.cli.demo import REQREP, run

if __name__ == "__main__":  # the guard matters: workload processes are spawned
    sys.exit(run(REQREP))

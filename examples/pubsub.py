"""Publish/subscribe between three processes, with SPIFFE identities and topic authorization.

Run it from a checkout: ``python examples/pubsub.py`` (exit status 0 when every
workload did what the policy says, 1 otherwise).

What happens, all on this machine and within a few seconds:

* a dev CA for ``example.org``, a ``dir://`` registry and one policy file are
  made in a temporary directory (``Stage.build``);
* ``orders`` (``spiffe://example.org/ns/shop/sa/orders``) binds a PUB socket
  for service ``orders`` and publishes three ``orders.created`` messages;
* ``inventory`` connects a SUB socket to the service by name, subscribes to
  ``orders.`` and prints each order with the publisher's authenticated SPIFFE ID;
* ``marketing`` (namespace ``ads``) tries the same subscription and is refused
  by the policy (rule ``orders-feed`` allows only inventory to subscribe).

Each workload is its own OS process. The workload code is in
``zmeshlib/cli/demo.py`` (``orders_publisher``, ``inventory_subscriber``,
``marketing_subscriber``), so that ``zmesh demo`` runs exactly this code too;
docs/examples.md walks through it.
"""

import sys

from zmeshlib.cli.demo import PUBSUB, run

if __name__ == "__main__":  # the guard matters: workload processes are spawned
    sys.exit(run(PUBSUB))

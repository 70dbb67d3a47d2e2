"""The meshfed dashboard (`kubectl meshfed dashboard`): a local web UI over the user's own kubeconfig.

Owns the local web server (dashboard.server), the view models the page shows (dashboard.views, pure)
and the reads of each member's istiod and gateway Envoy for one AccessPoint (dashboard.gateways). The
front-end is plain JavaScript in dashboard/static (package data: no CDN at run time).

Imported only by cli (the dashboard subcommand); imports federation and the pure cores, never cli or fleet.
"""

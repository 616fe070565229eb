# phoebe-spawner as an *external* JupyterHub service: it runs as its own process (its
# own host, container or systemd unit), JupyterHub only routes to it and vouches for
# users. Paste this into jupyterhub_config.py and run the service as shown below.
import os

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

c.JupyterHub.services = [
    {
        "name": "phoebe",
        "url": "http://phoebe.internal:8890",  # where JupyterHub's proxy reaches it
        # the service's token; generate one with `openssl rand -hex 32` and give the same
        # value to the service as JUPYTERHUB_API_TOKEN
        "api_token": os.environ["PHOEBE_SERVICE_TOKEN"],
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["custom:phoebe:admin"],
        "display": True,
    }
]
c.JupyterHub.custom_scopes = {
    "custom:phoebe:admin": {"description": "See and end every user's PHOEBE sessions"},
}
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", "access:services!service=phoebe"]},
    {
        "name": "server",
        "scopes": [
            "users:activity!user", "access:servers!server", "access:services!service=phoebe",
        ],
    },
    {"name": "phoebe-admin", "scopes": ["custom:phoebe:admin"], "groups": ["phoebe-admins"]},
]  # fmt: skip
c.JupyterHub.load_groups = {"phoebe-admins": {"users": []}}  # add users, or manage in the hub

# On the service's host (the same variables JupyterHub sets for a managed service):
#
#   export JUPYTERHUB_SERVICE_NAME=phoebe
#   export JUPYTERHUB_API_TOKEN=<the same token as PHOEBE_SERVICE_TOKEN>
#   export JUPYTERHUB_API_URL=http://hub.internal:8081/hub/api
#   export JUPYTERHUB_SERVICE_PREFIX=/services/phoebe/
#   export JUPYTERHUB_CLIENT_ID=service-phoebe
#   export JUPYTERHUB_OAUTH_CALLBACK_URL=/services/phoebe/oauth_callback
#   export JUPYTERHUB_HOST=              # empty: the hub and the service share one origin
#   phoebe-spawner --ip 0.0.0.0 --port 8890
#
# Auth mode hub is picked automatically when these are set (or pass --auth-mode hub).

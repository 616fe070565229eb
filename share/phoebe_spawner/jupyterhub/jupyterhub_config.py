# phoebe-spawner as a *managed* JupyterHub service: JupyterHub starts it, passes it its
# token and OAuth client in JUPYTERHUB_* variables, and stops it when the hub stops.
# Paste this into jupyterhub_config.py (or load it with `load_subconfig`). The service
# then appears in the hub's Services menu at /services/phoebe/ (user page) and
# /services/phoebe/admin (admin page).
import sys

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

c.JupyterHub.services = [
    {
        "name": "phoebe",
        "display": True,  # listed in the Services menu
        "url": "http://127.0.0.1:8890",  # where the service listens (it reads this itself)
        "command": [
            sys.executable, "-m", "phoebe_spawner",
            # "--config", "/etc/phoebe-spawner/phoebe_spawner_config.py",
        ],
        "oauth_no_confirm": True,  # our own service: skip the "authorize access?" page
        # lets the OAuth token carry the admin scope for users who hold it
        "oauth_client_allowed_scopes": ["custom:phoebe:admin"],
        "info": {"description": "PHOEBE eclipsing-binary sessions"},
    }
]  # fmt: skip

# Who may use it: every user, and (so `PhoebeClient()` works with no arguments in a
# notebook) the token each notebook server gets as $JUPYTERHUB_API_TOKEN.
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
    # hub admins are phoebe-spawner admins anyway; this role makes others admins too
    {"name": "phoebe-admin", "scopes": ["custom:phoebe:admin"], "groups": ["phoebe-admins"]},
]  # fmt: skip
c.JupyterHub.load_groups = {"phoebe-admins": {"users": []}}  # add users, or manage in the hub

# Tell notebook servers where the service is (the client library reads it). Use the
# hub's public URL, as the notebook server reaches it.
c.Spawner.environment = {"PHOEBE_SPAWNER_URL": "http://127.0.0.1:8000/services/phoebe/"}

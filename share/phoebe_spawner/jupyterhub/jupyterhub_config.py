# phoebe-spawner as a *managed* JupyterHub service: JupyterHub starts it on the hub's own
# Python (which needs `pip install 'phoebe-spawner[hub]' phoebe-kernel-worker`), passes
# it its token, URL and prefix in JUPYTERHUB_* variables, and stops it with the hub.
# Paste this at the end of jupyterhub_config.py as it is: it adds to what is set above
# it (services, roles, groups, scopes, the notebooks' environment) and replaces nothing.
# The service then appears in the hub's Services menu at /services/phoebe/ (the user
# page; /services/phoebe/admin for admins), and `PhoebeClient()` works with no arguments
# in every notebook.
import os
import sys

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

# Where the service keeps its database, secret, checkpoints and worker files, and its
# own config file (spawner, limits, culling; optional: without it the defaults apply).
# Both absolute, so they do not depend on the directory JupyterHub starts in: set the
# variables before starting JupyterHub, or edit the defaults here. The service's config
# must not set ip, port, base_url or auth_mode: JupyterHub gives it those.
phoebe_data_dir = os.environ.get("PHOEBE_SPAWNER_DATA_DIR", "/srv/phoebe-spawner")
phoebe_config = os.environ.get(
    "PHOEBE_SPAWNER_CONFIG", "/etc/phoebe-spawner/phoebe_spawner_config.py"
)
phoebe_command = [sys.executable, "-m", "phoebe_spawner", "--data-dir", phoebe_data_dir]
if os.path.exists(phoebe_config):
    phoebe_command += ["--config", phoebe_config]
# Restarting JupyterHub (how config changes are applied) restarts the service too:
# --keep-workers leaves the students' PHOEBE sessions running for the next start to take
# back, and cleanup_servers = False keeps their notebook servers (and kernels) running.
phoebe_command += ["--keep-workers"]
c.JupyterHub.cleanup_servers = False

phoebe_service = {
    "name": "phoebe",
    "display": True,  # listed in the Services menu
    "url": "http://127.0.0.1:8890",  # where the service listens (it reads this itself)
    "command": phoebe_command,
    "oauth_no_confirm": True,  # our own service: skip the "authorize access?" page
    # lets the OAuth token carry the admin scope for users who hold it
    "oauth_client_allowed_scopes": ["custom:phoebe:admin"],
    "info": {"description": "PHOEBE eclipsing-binary sessions"},
}
c.JupyterHub.services.append(phoebe_service)

# Who may use it: every user, and (so `PhoebeClient()` works with no arguments in a
# notebook) the token each notebook server gets as $JUPYTERHUB_API_TOKEN, which never
# has more rights than its user. Admins of the service: the hub's admins, and the
# members of the group phoebe-admins (add them in the hub's admin page; they log in to
# the service again to become admins there).
c.JupyterHub.custom_scopes.update(
    {"custom:phoebe:admin": {"description": "See and end every user's PHOEBE sessions"}}
)
phoebe_user_role = {"name": "user", "scopes": ["self", "access:services!service=phoebe"]}
c.JupyterHub.load_roles.extend(
    [
        phoebe_user_role,
        {
            "name": "server",
            "scopes": [
                "users:activity!user",
                "access:servers!server",
                "access:services!service=phoebe",
            ],
        },
        {"name": "phoebe-admin", "scopes": ["custom:phoebe:admin"], "groups": ["phoebe-admins"]},
    ]
)
c.JupyterHub.load_groups.update({"phoebe-admins": {"users": []}})  # adds no one, removes no one

# Tell notebook servers where the service is (the client library reads it), keeping the
# environment set above: the hub's public URL, as a notebook server reaches it.
c.Spawner.environment.update({"PHOEBE_SPAWNER_URL": "http://127.0.0.1:8000/services/phoebe/"})

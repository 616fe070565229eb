// jwt mode's login page: the login form (POST /auth/login) and, when registration is
// open, the "Create an account" form behind the #register link (POST /auth/register).
// Both set the login cookie; the page then reloads as the logged-in user.
"use strict";
(() => {
  function submitTo(form, path, errorId, fields) {
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const error = document.getElementById(errorId);
      error.hidden = true;
      const body = {};
      for (const name of fields) body[name] = form.elements[name].value;
      try {
        await PS.api("POST", path, body);
        window.location.reload();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    });
  }

  submitTo(document.getElementById("login-form"), "auth/login", "login-error",
    ["email", "password"]);
  const register = document.getElementById("register-form");
  if (!register) return;  // registration is closed: the page says whom to ask
  submitTo(register, "auth/register", "register-error",
    ["email", "password", "first_name", "last_name"]);
  const show = () => {  // the "Create an account" link (#register) opens the form
    if (window.location.hash !== "#register") return;
    document.getElementById("register").hidden = false;
    register.elements.email.focus();
  };
  window.addEventListener("hashchange", show);
  show();
})();

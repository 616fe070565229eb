// jwt mode's login form: POST /auth/login sets the login cookie, then reload the page.
"use strict";
(() => {
  const form = document.getElementById("login-form");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("login-error");
    error.hidden = true;
    try {
      await PS.api("POST", "auth/login", {
        email: form.elements.email.value, password: form.elements.password.value,
      });
      window.location.reload();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });
})();

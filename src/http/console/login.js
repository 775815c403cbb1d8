// Shows why the login page was reached again (no inline script: the page's CSP forbids it).
(function () {
  var query = new URLSearchParams(window.location.search);
  if (query.has("failed")) document.getElementById("login-error").hidden = false;
  if (query.has("disabled")) document.getElementById("login-disabled").hidden = false;
})();

// Asks before a form marked data-confirm is sent (purging cannot be undone). A file of its own:
// the Content-Security-Policy allows no inline script.
"use strict";
document.addEventListener("submit", function (event) {
  var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

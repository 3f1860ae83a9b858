// The workbench's only script: a learning job in progress reloads its page every few seconds.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const running = document.querySelector("[data-refresh]");
  if (running) {
    const seconds = Number(running.dataset.refresh) || 3;
    setTimeout(() => window.location.reload(), seconds * 1000);
  }
});

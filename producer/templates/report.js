// The label filter: shows the labels (and their parents) that contain what is typed.
(() => {
  const box = document.getElementById("filter");
  const labels = document.querySelectorAll("section.label");
  box.hidden = false;
  box.addEventListener("input", () => {
    const wanted = box.value.trim().toLowerCase();
    for (const label of labels) {
      label.hidden = wanted !== "" && !label.dataset.label.toLowerCase().includes(wanted);
    }
  });
})();

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

// A preview opened larger: a click (or Enter) on one shows it in a dialog with its name, where
// it is and its labels; Esc or a click closes it.
(() => {
  const viewer = document.getElementById("viewer");
  const big = viewer.querySelector("img");
  const show = (img) => {
    const figure = img.closest("figure");
    big.setAttribute("src", img.getAttribute("src"));
    big.alt = img.alt;
    viewer.querySelector(".name").textContent = figure.querySelector(".name").textContent + " " +
      figure.querySelector(".score").textContent;
    viewer.querySelector(".place").textContent = figure.title;
    viewer.querySelector(".label").textContent =
      figure.querySelector(".label")?.textContent ??
      figure.closest("section.label")?.querySelector("h3 .name")?.textContent ?? "";
    viewer.showModal();
  };
  for (const img of document.querySelectorAll("figure.photo img")) {
    img.addEventListener("click", () => show(img));
    img.addEventListener("keydown", (event) => { if (event.key === "Enter") show(img); });
  }
  viewer.addEventListener("click", () => viewer.close());
})();

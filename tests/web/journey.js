/* The shop journey both test pages push (tests/test_browser.py), step by step: the events
   rules/ reacts to (rules/*.rules, examples/shop.jsonl). track(layer, step) pushes a step's
   objects to a data layer and logs a copy of each in window.pushed, what the test expects the
   forwarder to have sent. */
var JOURNEY = {
  home: [
    { event: "page.view", eventInfo: { campaign: "Summer-Sale" },
      page: { name: "Spinair | Home", type: "Home", section: "Home", url: "https://www.spinair.com/?cid=summer-sale", language: "en", breadcrumbs: ["Home"] } }
  ],
  search: [
    { event: "page.view", page: { name: "Search results", type: "Search", section: "Search", url: "https://www.spinair.com/search?q=trail+shoes", language: "en", breadcrumbs: ["Home", "Search"] } },
    { event: "search.results", search: { term: "  Trail   Shoes ", resultCount: "42", category: "running" } }
  ],
  product: [
    { event: "page.view", page: { name: "Trail Runner X", type: "Product", section: "Running", url: "https://www.spinair.com/p/sp-tr-001", language: "en", breadcrumbs: ["Home", "Running", "Trail"] } },
    { event: "commerce.productView", eventInfo: { list: "Search results" },
      product: { sku: "sp-tr-001", name: "Trail Runner X", price: "129.90", categories: ["Running", "Trail"], brand: "Spinair" } }
  ],
  add: [
    { event: "commerce.cartAdd", eventInfo: { quantity: 2 },
      cart: { id: "C-7781", total: 259.8, updatedAt: "2025-06-02T10:15:00Z",
              items: [{ SKU: "SP-TR-001", name: "Trail Runner X", quantity: 2, priceTotal: 259.8 }],
              lineRefs: [{ item_id: "SP-TR-001" }] } }
  ],
  wishlist: [
    { wishlist: { items: [{ SKU: "SP-JK-220", name: "Storm Shell Jacket" }] } }
  ],
  checkout: [
    { event: "page.view", page: { name: "Checkout", type: "Checkout", section: "Checkout", url: "https://www.spinair.com/checkout", language: "en", breadcrumbs: ["Home", "Checkout"] } },
    { event: "commerce.checkout" }
  ],
  login: [
    { event: "user.login", user: { id: 100482, email: " Ana.Silva@Example.com ", firstName: "Ana", lastName: "Silva", tier: "Gold", loggedIn: true } }
  ],
  purchase: [
    { event: "page.view", page: { name: "Thank you", type: "Confirmation", section: "Checkout", url: "https://www.spinair.com/checkout/thank-you", language: "en", breadcrumbs: ["Home", "Checkout", "Thank you"] } },
    { event: "commerce.purchase", eventInfo: { orderId: "sp-100234", paymentType: "PayPal" } },
    { cart: null }
  ],
  // a page bug: a number beyond 64-bit integers, which the endpoint refuses (ok: false)
  bad: [{ event: "widget.shown", count: 1e20 }]
};

var pushed = [];
var answers = []; // the endpoint's answer to each push, as the forwarder tells the page
addEventListener("tagengine:result", function (e) {
  answers.push(e.detail);
});

function track(layer, step) {
  JOURNEY[step].forEach(function (item) {
    var copy = JSON.parse(JSON.stringify(item));
    pushed.push(JSON.parse(JSON.stringify(copy)));
    layer.push(copy);
  });
}

/* Buttons and links with data-step push that step when clicked. */
function wire(layer) {
  document.addEventListener("click", function (e) {
    var step = e.target.getAttribute && e.target.getAttribute("data-step");
    if (step) track(layer(), step);
  });
}

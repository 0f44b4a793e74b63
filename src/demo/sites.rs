//! The demo's make-believe websites and their visitors.
//!
//! Each site has pages (with titles), elements a visitor may click and forms a visitor may submit,
//! named the way `data-fd-track` and `data-fd-form` would name them. A visitor arrives from a
//! referrer with a viewport, browses a few pages (the first is usually the home page), clicks now
//! and then, and sometimes submits a form; each step is one tracker batch, exactly what
//! `/track.js` would send.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// One make-believe website.
#[derive(Debug)]
pub struct Site {
    /// Its site id, e.g. `demo-shop`.
    pub id: String,
    /// The origin its pages are "served" from, sent as `Origin` and registered for the site, e.g.
    /// `https://shop.demo.flightdeck.test` (`.test` is reserved: it can be no real website).
    pub origin: String,
    catalog: &'static Catalog,
}

struct Catalog {
    name: &'static str,
    pages: &'static [(&'static str, &'static str)],
    elements: &'static [&'static str],
    forms: &'static [(&'static str, &'static [&'static str])],
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

const CATALOGS: &[Catalog] = &[
    Catalog {
        name: "shop",
        pages: &[
            ("/", "Bean & Brew: coffee gear"),
            ("/products", "All products"),
            ("/products/espresso-machine", "Espresso machine Duo"),
            ("/products/grinder", "Burr grinder Fine"),
            ("/products/milk-frother", "Milk frother"),
            ("/cart", "Your cart"),
            ("/checkout", "Checkout"),
            ("/about", "About us"),
        ],
        elements: &["add-to-cart", "buy-now", "search", "filter-price", "newsletter-signup"],
        forms: &[("checkout", &["email", "name", "address", "card"]), ("newsletter", &["email"])],
    },
    Catalog {
        name: "blog",
        pages: &[
            ("/", "Notes on real-time systems"),
            ("/posts/listen-notify", "LISTEN/NOTIFY in practice"),
            ("/posts/event-sourcing-101", "Event sourcing 101"),
            ("/posts/live-dashboards", "Live dashboards without polling"),
            ("/tags/postgresql", "Posts tagged PostgreSQL"),
            ("/about", "About the author"),
        ],
        elements: &["share", "subscribe", "toggle-comments", "next-post"],
        forms: &[("comment", &["name", "comment"]), ("subscribe", &["email"])],
    },
    Catalog {
        name: "docs",
        pages: &[
            ("/", "Documentation"),
            ("/getting-started", "Getting started"),
            ("/guides/tracker", "Guide: the tracker"),
            ("/guides/projections", "Guide: projections"),
            ("/reference/http-api", "Reference: HTTP API"),
            ("/reference/cli", "Reference: command line"),
            ("/faq", "FAQ"),
        ],
        elements: &["copy-code", "search", "toc-link", "feedback-yes", "feedback-no"],
        forms: &[("feedback", &["rating", "comment"]), ("search", &["q"])],
    },
    Catalog {
        name: "saas",
        pages: &[
            ("/", "Acme Analytics"),
            ("/features", "Features"),
            ("/pricing", "Pricing"),
            ("/signup", "Start your free trial"),
            ("/login", "Log in"),
            ("/customers", "Customer stories"),
        ],
        elements: &["start-trial", "pricing-toggle", "contact-sales", "watch-demo"],
        forms: &[("signup", &["email", "password", "company"]), ("contact", &["name", "email", "message"])],
    },
];

const REFERRERS: &[&str] = &[
    "",
    "",
    "https://www.google.com/",
    "https://duckduckgo.com/",
    "https://news.ycombinator.com/",
    "https://www.reddit.com/",
    "https://mastodon.social/",
];

const VIEWPORTS: &[(u32, u32)] =
    &[(1920, 1080), (1536, 864), (1440, 900), (1366, 768), (390, 844), (412, 915), (768, 1024)];

/// The demo's `count` sites: `demo-shop`, `demo-blog`, `demo-docs`, `demo-saas`, then
/// `demo-shop-2`, … when more are asked for, each with its own origin.
pub fn sites(count: usize) -> Vec<Site> {
    (0..count)
        .map(|i| {
            let catalog = &CATALOGS[i % CATALOGS.len()];
            let round = i / CATALOGS.len();
            let name = if round == 0 { catalog.name.to_string() } else { format!("{}-{}", catalog.name, round + 1) };
            Site { id: format!("demo-{name}"), origin: format!("https://{name}.demo.flightdeck.test"), catalog }
        })
        .collect()
}

/// One simulated visitor session on one site.
#[derive(Debug)]
pub struct Visitor {
    /// Index of the site in the demo's list.
    pub site: usize,
    /// The session id (what `/track.js` keeps in localStorage).
    pub session: String,
    pages_left: u32,
    current: Option<usize>,
    previous_url: String,
    viewport: (u32, u32),
}

impl Visitor {
    /// A new visitor on `site` (index `index`), arriving from a random referrer.
    pub fn new(index: usize, rng: &mut impl Rng) -> Visitor {
        Visitor {
            site: index,
            session: format!("{:016x}", rng.random::<u64>()),
            pages_left: rng.random_range(1..=7),
            current: None,
            previous_url: REFERRERS.choose(rng).copied().unwrap_or_default().to_string(),
            viewport: VIEWPORTS.choose(rng).copied().unwrap_or((1280, 800)),
        }
    }

    /// Whether the visitor has left.
    pub fn done(&self) -> bool {
        self.pages_left == 0
    }

    /// The visitor's next step as tracker events `{"id","type","data"}`: a page view, maybe
    /// followed by a click and, more rarely, a form submission. Empty once the visitor has left.
    pub fn step(&mut self, site: &Site, rng: &mut impl Rng) -> Vec<Value> {
        if self.done() {
            return Vec::new();
        }
        self.pages_left -= 1;
        let pages = site.catalog.pages;
        let page = match self.current {
            // Most visits start on the home page.
            None if rng.random_bool(0.6) => 0,
            _ => rng.random_range(0..pages.len()),
        };
        self.current = Some(page);
        let (path, title) = pages[page];
        let mut events = vec![event(
            "PageViewed",
            json!({
                "path": path,
                "title": title,
                "referrer": self.previous_url,
                "viewport": {"w": self.viewport.0, "h": self.viewport.1},
            }),
        )];
        self.previous_url = format!("https://{}.example{path}", site.id);
        if rng.random_bool(0.45)
            && let Some(element) = site.catalog.elements.choose(rng)
        {
            events.push(event(
                "ElementInteraction",
                json!({"element": element, "action": "click", "path": path, "tag": "button"}),
            ));
        }
        if rng.random_bool(0.08)
            && let Some((form, fields)) = site.catalog.forms.choose(rng)
        {
            events.push(event(
                "FormSubmitted",
                json!({"form": form, "fields": fields, "fieldCount": fields.len(), "path": path}),
            ));
        }
        events
    }
}

fn event(kind: &str, data: Value) -> Value {
    json!({"id": uuid::Uuid::now_v7().to_string(), "type": kind, "data": data})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn visitors_send_what_the_tracker_accepts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let sites = sites(5);
        assert_eq!(
            sites.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["demo-shop", "demo-blog", "demo-docs", "demo-saas", "demo-shop-2"]
        );
        assert_eq!(sites[0].origin, "https://shop.demo.flightdeck.test");
        assert_eq!(sites[4].origin, "https://shop-2.demo.flightdeck.test");
        for site in &sites {
            let origin = crate::sites::Origin::parse(&site.origin).unwrap();
            assert_eq!(origin.as_str(), site.origin, "already normalized, as browsers send it");
        }
        for i in 0..200 {
            let mut visitor = Visitor::new(i % sites.len(), &mut rng);
            let site = &sites[visitor.site];
            let mut steps = 0;
            while !visitor.done() {
                let events = visitor.step(site, &mut rng);
                assert!(!events.is_empty());
                let body = json!({"site": site.id, "session": visitor.session, "events": events});
                crate::tracker::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
                steps += 1;
            }
            assert!((1..=7).contains(&steps));
            assert!(visitor.step(site, &mut rng).is_empty());
        }
    }
}

//! Prometheus scrapes in the event loop: the `[daemon] metrics` listener,
//! each scraper's exchange (`metrics::Scrape`), a timeout per scrape from
//! the timer map, and the page rendered from the live counters. A slow
//! or silent scraper costs its buffers until the timeout and delays
//! nobody else.

use std::os::fd::AsRawFd;
use std::time::Instant;

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::timers::Timer;
use super::{Server, TokenKind, METRICS};
use crate::listener::Listener;
use crate::metrics::{self as prom, Request, Scrape, ScrapeState};

/// Scrapers accepted per wake-up before the loop turns to other sources.
const SCRAPE_ACCEPT_BUDGET: usize = 16;
/// Scrapes open at once, so idle scrapers cannot take the fds services
/// need (each is closed at `SCRAPE_TIMEOUT` anyway); at the cap a new one
/// replaces the slowest asker. Prometheus sends one scrape at a time.
const MAX_SCRAPES: usize = 32;

impl Server {
    /// Swap the metrics listener (the old one's file is removed on drop).
    pub(super) fn set_metrics(&mut self, metrics: Option<Listener>) {
        let old = std::mem::replace(&mut self.metrics, metrics);
        self.swap_watched(old, METRICS, "metrics");
    }

    pub(super) fn accept_scrapers(&mut self) {
        for _ in 0..SCRAPE_ACCEPT_BUDGET {
            let Some(listener) = &self.metrics else {
                return;
            };
            // At the cap a new scraper takes the place of the one whose
            // request has been incomplete longest (or else of one waiting
            // to close after its answer), so clients trickling their
            // request cannot make whole ones wait behind them. When all
            // are being answered the rest wait in the backlog; a scrape
            // that ends accepts them (edge-triggered: nothing else would).
            let full = self.scrapes.len() >= MAX_SCRAPES;
            if full && !self.scrapes.values().any(|s| s.evictable().is_some()) {
                return;
            }
            // Its own accept ran out of fds a moment ago: wait for the
            // back-off to end (a fork failure's stalls no scrape).
            if self.metrics_stalled && self.resources.is_paused(Instant::now()) {
                return;
            }
            self.metrics_stalled = false;
            let socket = match listener.socket.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if super::connection::is_resource_error(&e) => {
                    // The scraper stays queued, and nothing would wake us
                    // for it again: retried when the back-off ends.
                    self.metrics_stalled = true;
                    self.accept_fd_fault = true;
                    self.resource_fault("metrics: accept", &e, Instant::now());
                    return;
                }
                Err(e) => {
                    warn!("metrics: accept: {e}");
                    return;
                }
            };
            self.accepted_after_fd_fault();
            if full {
                self.evict_a_scrape();
            }
            let Ok(scrape) = Scrape::new(socket) else {
                continue;
            };
            let token = self.tokens.next();
            let fd = scrape.socket.as_raw_fd();
            if self
                .poll
                .registry()
                .register(
                    &mut SourceFd(&fd),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            self.tokens.insert(token, TokenKind::Scrape);
            self.scrapes.insert(token, scrape);
            let timer = self.timers.add(
                Instant::now() + prom::SCRAPE_TIMEOUT,
                Timer::ScrapeTimeout(token),
            );
            self.client_timers.insert(token, timer);
        }
        // More may be queued: epoll reports them again only for new ones.
        self.accept_more_scrapers = true;
    }

    /// Close the scrape a new one may replace at the cap, if any.
    fn evict_a_scrape(&mut self) {
        let victim = self
            .scrapes
            .iter()
            .filter_map(|(token, s)| Some((s.evictable()?, *token)))
            .min();
        if let Some((_, token)) = victim {
            debug!("metrics: {MAX_SCRAPES} scrapes open; closed the slowest for a new one");
            self.close_scrape(token);
        }
    }

    pub(super) fn on_scrape_ready(&mut self, token: Token) {
        let Some(scrape) = self.scrapes.get_mut(&token) else {
            return;
        };
        let state = match scrape.on_ready() {
            ScrapeState::Asked(request) => {
                let answer = match request {
                    Request::Metrics => prom::response(200, &self.render_metrics()),
                    Request::NotFound => prom::response(404, "only /metrics is here\n"),
                    Request::Bad(code) => prom::response(code, "bad request\n"),
                    Request::Incomplete => return,
                };
                match self.scrapes.get_mut(&token) {
                    Some(s) => s.answer(answer),
                    None => return,
                }
            }
            other => other,
        };
        match state {
            ScrapeState::Done => self.close_scrape(token),
            // Its own short deadline to close its end, whatever was left
            // of the scrape's.
            ScrapeState::Lingering => {
                self.cancel_client_timer(token);
                let timer = self
                    .timers
                    .add(Instant::now() + prom::LINGER, Timer::ScrapeTimeout(token));
                self.client_timers.insert(token, timer);
                // At the cap, a scraper in the backlog may take its place.
                if self.scrapes.len() >= MAX_SCRAPES {
                    self.accept_more_scrapers = true;
                }
            }
            _ => {}
        }
    }

    pub(super) fn close_scrape(&mut self, token: Token) {
        self.tokens.remove(&token);
        self.cancel_client_timer(token);
        if let Some(scrape) = self.scrapes.remove(&token) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&scrape.socket.as_raw_fd()));
            // Below the cap again: scrapers may wait in the backlog.
            if self.scrapes.len() + 1 == MAX_SCRAPES {
                self.accept_more_scrapers = true;
            }
        }
    }

    /// A scrape that has not finished by its deadline is dropped.
    pub(super) fn scrape_timed_out(&mut self, token: Token) {
        if self.scrapes.contains_key(&token) {
            debug!(
                "metrics: a scraper took longer than {:?}; closed",
                prom::SCRAPE_TIMEOUT
            );
            self.close_scrape(token);
        }
    }

    fn render_metrics(&self) -> String {
        let now = Instant::now();
        let figures: Vec<prom::ServiceFigures<'_>> = self
            .services
            .iter()
            .map(|svc| prom::ServiceFigures {
                name: &svc.spec.name,
                connections: svc.stats.served,
                children: u64::from(self.active(svc.id)),
                refused: svc.stats.refused_by,
                spawn_failures: svc.stats.spawn_failures,
                exits: svc.stats.exits,
                durations: svc.stats.durations.get(),
                paused: self.pause(svc, now),
            })
            .collect();
        prom::render(&figures, &prom::ProcessFigures::read())
    }
}

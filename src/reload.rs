//! Live reload on `SIGHUP`: the config file and its catalog are read again
//! off the event loop, validated as a whole, and the new runtime part
//! ([`RuntimeConfig`]: catalog, Response Group matchers, policy, flag
//! header) is published with [`Core::publish`]; messages being handled
//! finish with the snapshot they started with. Any problem keeps the running
//! configuration: every problem is logged with its key path and the failure
//! is counted (`sipadmit_config_reloads_total{result="failure"}`).
//!
//! `[rate_limit]` is policy too: a changed one is applied to the running
//! [`Admission`] (new buckets at the new rates, bans in force kept; see
//! [`Admission::reconfigure`]).
//!
//! The flow secrets are applied too: `proxy.flow_secret_file` is read
//! again (a file that cannot be read, that every user may read, or with a
//! short secret fails the whole reload, naming the file and line), and a
//! changed set of secrets swaps the core's signer ([`Core::set_flow_signer`]):
//! the first secret signs from the next message on, every one verifies. A
//! config that no longer names any secret keeps the running ones (a random
//! secret would break every token in use): that needs a restart.
//!
//! The restart-only settings ([`Settings`]: listeners, advertised names,
//! upstream, upstream sources, decision log path, limits, admin listener,
//! TLS handshake deadline) are not applied; each one that changed is logged
//! as "changed, needs restart", and the rest of the file still applies.
//! Command-line values ([`Overrides`]) keep replacing the file's on every
//! reload.
//!
//! The same reload then rebuilds the TLS contexts ([`TlsContexts::reload`]):
//! from the new `[tls]` settings when the file loaded, else from the ones in
//! use; either way the certificate, key and CA files are read again (a
//! renewed certificate needs no valid config edit). Each side's outcome is
//! logged and counted (`sipadmit_tls_reloads_total{side,result}`); a side
//! whose files are broken keeps its running context.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, Overrides, RuntimeConfig, Settings};
use crate::observe::metrics::ReloadResult;
use crate::observe::Metrics;
use crate::proxy::flow::FlowSigner;
use crate::proxy::Core;
use crate::systemd::Notifier;
use crate::transport::admission::Admission;
use crate::transport::tls::TlsContexts;

/// What reloading needs: where the config is, the flags it was started
/// with, and the settings the instance runs with.
#[derive(Debug)]
pub struct Reloader {
    /// The config file.
    pub path: PathBuf,
    /// Command-line values, applied again on every reload.
    pub overrides: Overrides,
    /// The restart-only settings in use.
    pub running: Settings,
    /// The per-source limits the transports check (`[rate_limit]` is
    /// applied on reload).
    pub admission: Arc<Admission>,
    /// The TLS contexts to rebuild (empty without TLS).
    pub tls: TlsContexts,
}

/// What `systemctl status` says after a reload that kept the running
/// configuration.
const KEPT_STATUS: &str =
    "the last reload failed and the running configuration is kept (see the journal)";

/// What one reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new runtime configuration is in use under this generation;
    /// the restart-only keys listed changed and were not applied.
    Published {
        /// Generation now in use.
        generation: u64,
        /// Restart-only keys whose value changed.
        needs_restart: Vec<&'static str>,
        /// `[rate_limit]` changed and was applied.
        rate_limit_applied: bool,
        /// The flow secrets changed and the new ones are in use.
        flow_secrets_applied: bool,
    },
    /// The file had problems; the running configuration is kept.
    Kept,
}

impl Reloader {
    /// Reload once per request on `requests` until `shutdown`, telling
    /// systemd (`notifier`) when each begins and ends.
    pub async fn run(
        self,
        mut requests: mpsc::Receiver<()>,
        core: Arc<Core>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        notifier: Option<Arc<Notifier>>,
    ) {
        let reloader = Arc::new(self);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                request = requests.recv() => {
                    if request.is_none() {
                        return;
                    }
                    if let Some(notifier) = &notifier {
                        notifier.reloading();
                    }
                    let loading = reloader.clone();
                    // Files and the catalog's patterns: not on the event loop.
                    let loaded = tokio::task::spawn_blocking(move || {
                        Config::load(&loading.path, &loading.overrides)
                    })
                    .await;
                    let mut tls_settings = None;
                    let status = match loaded {
                        Ok(loaded) => {
                            tls_settings = loaded.as_ref().ok().map(|c| c.settings.tls.clone());
                            match reloader.apply(&core, &metrics, loaded) {
                                Reloaded::Published { generation, .. } => {
                                    format!("configuration generation {generation}")
                                }
                                Reloaded::Kept => KEPT_STATUS.to_owned(),
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "config reload did not finish; running configuration kept");
                            metrics.count_reload(ReloadResult::Failure);
                            KEPT_STATUS.to_owned()
                        }
                    };
                    let (tls, tls_metrics) = (reloader.tls.clone(), metrics.clone());
                    let rebuilt = tokio::task::spawn_blocking(move || {
                        tls.reload(tls_settings.as_ref(), &tls_metrics)
                    })
                    .await;
                    let tls_reloaded = match rebuilt {
                        Ok(reloaded) => reloaded,
                        Err(e) => {
                            warn!(error = %e, "TLS reload did not finish; running TLS contexts kept");
                            false
                        }
                    };
                    if let Some(notifier) = &notifier {
                        let tls = if tls_reloaded {
                            ""
                        } else {
                            "; the TLS certificates were not reloaded (see the journal)"
                        };
                        notifier.reloaded(&format!("{status}{tls}"));
                    }
                }
            }
        }
    }

    /// Publish a loaded config's runtime part, or keep the running one when
    /// it failed to load; log and count either way.
    pub fn apply(
        &self,
        core: &Core,
        metrics: &Metrics,
        loaded: Result<Config, ConfigError>,
    ) -> Reloaded {
        let config = match loaded {
            Ok(config) => config,
            Err(e) => return self.keep(core, metrics, &e),
        };
        let flow_secrets_applied = self.apply_flow_secrets(core, &config.settings);
        let needs_restart = self.needing_restart(core, &config.settings);
        let RuntimeConfig {
            ref catalog_source,
            ref policy,
            ..
        } = config.runtime;
        let (catalog_source, mode) = (catalog_source.clone(), policy.mode);
        let mut changed = core.runtime().config.changed_keys(&config.runtime);
        // Published first, the rate limits then named by its generation: a
        // refusal under the limits before is recorded with the snapshot
        // before ([`Core::refuse_source`]).
        let generation = core.publish(config.runtime);
        let rate_limit_applied = self
            .admission
            .reconfigure(config.settings.rate_limit.clone(), generation);
        if rate_limit_applied {
            changed.push("rate_limit");
        }
        if let Some(key) = flow_secrets_applied {
            changed.push(key);
        }
        let listed = |keys: Vec<&str>| match keys.is_empty() {
            true => "nothing".to_owned(),
            false => keys.join(", "),
        };
        let changed = listed(changed);
        // Applied by the TLS reload that follows, which may refuse them
        // (its own line says whether they took).
        // No key changed is no news of the files: a renewed certificate at
        // the same path is read again all the same.
        let tls_changed = match self.tls.changed_keys(&config.settings.tls) {
            keys if !keys.is_empty() => keys.join(", "),
            _ if self.tls.is_used() => {
                "no key (the files are read again: the TLS lines say what took)".to_owned()
            }
            _ => "nothing".to_owned(),
        };
        metrics.count_reload(ReloadResult::Success);
        info!(
            config = %self.path.display(),
            catalog = %catalog_source,
            mode = mode.as_str(),
            generation,
            changed = %changed,
            tls_changed = %tls_changed,
            needs_restart = needs_restart.len(),
            rate_limit_applied,
            flow_secrets_applied = flow_secrets_applied.is_some(),
            "config reloaded"
        );
        Reloaded::Published {
            generation,
            needs_restart,
            rate_limit_applied,
            flow_secrets_applied: flow_secrets_applied.is_some(),
        }
    }

    /// A config that failed to load: every problem logged, the failure
    /// counted, the running configuration kept.
    fn keep(&self, core: &Core, metrics: &Metrics, e: &ConfigError) -> Reloaded {
        let problems = e.problems();
        for problem in &problems {
            warn!(
                config = %self.path.display(),
                key = %problem.key,
                problem = %problem.message,
                "config reload: problem"
            );
        }
        warn!(
            config = %self.path.display(),
            problems = problems.len(),
            generation = core.generation(),
            "config reload failed; running configuration kept"
        );
        metrics.count_reload(ReloadResult::Failure);
        Reloaded::Kept
    }

    /// The restart-only keys a loaded config changes (each logged): those
    /// of [`Settings::needing_restart`], and the flow secrets when the
    /// config no longer names any while configured ones sign (from the
    /// start, or from a reload): the running ones stay.
    fn needing_restart(&self, core: &Core, settings: &Settings) -> Vec<&'static str> {
        let mut needs_restart = self.running.needing_restart(settings);
        if settings.flow_secrets.is_none() && core.flow_signer().signs_with_a_configured_secret() {
            needs_restart.push("proxy.flow_secret");
        }
        for key in &needs_restart {
            warn!(
                config = %self.path.display(),
                key,
                "config reload: setting changed, needs restart; the running value stays in use"
            );
        }
        needs_restart
    }

    /// Swap in the flow secrets of a loaded config when they differ from
    /// the ones in use; their key when they did. Without secrets in the
    /// config, the running signer stays.
    fn apply_flow_secrets(&self, core: &Core, settings: &Settings) -> Option<&'static str> {
        let secrets = settings.flow_secrets.as_ref()?;
        // The tokens signed with the random secret of a start without one
        // (Path of every registration, Record-Route of every dialog) keep
        // verifying until a restart.
        let running = core.flow_signer();
        let (signer, replaced) =
            FlowSigner::with_secrets(secrets.secrets())?.carrying_replaced_of(&running);
        let signer = signer.carrying_random_of(&running);
        let (count, fingerprint) = (signer.secrets(), signer.fingerprint());
        let random_secret_verifies = signer.verifies_a_random_secret();
        if !core.set_flow_signer(signer) {
            return None;
        }
        if replaced {
            warn!(
                config = %self.path.display(),
                source = secrets.key(),
                signing_fingerprint = %fingerprint,
                "config reload: the flow secret was replaced outright: the one it replaced still verifies the tokens in use (registrations' Path, dialogs' Record-Route) until a restart; to retire a secret without a restart, rotate through flow_secret_file (the new secret first, the old second, then the old removed once every client has registered again)"
            );
        }
        info!(
            config = %self.path.display(),
            source = secrets.key(),
            secrets = count,
            random_secret_verifies,
            signing_fingerprint = %fingerprint,
            "config reload: flow secrets changed: the first signs, every one verifies (with random_secret_verifies, also the random secret this run started with, until a restart)"
        );
        Some(secrets.key())
    }
}

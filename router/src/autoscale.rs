//! The autoscaler's decision, with Azure's semantics and defaults, as a pure function of what
//! was observed: no clock and no I/O, so tests drive it with a simulated clock.
//!
//! Azure counts a service's utilization as busy replicas over total replicas, where a replica
//! is as busy as the share of its `maxConcurrentRequestsPerContainer` slots in use (requests
//! waiting at the router count too). Above `autoscale_target_utilization` (default 70 %) it adds
//! replicas within about one refresh period (default 1 s), towards
//! `ceil(busy / target)` — Azure's documented formula
//! `replicas = ceil(concurrent requests / (maxConcurrentRequestsPerContainer × target))`. It
//! removes replicas only once that formula has called for fewer for a whole stabilisation window
//! (default 60 s), and never goes outside `[min, max]` replicas (defaults 1 and 10).

use modelpod_scoring::deployment::{DeploymentConfig, defaults};
use std::time::Duration;

/// How long utilization must stay low before replicas are removed.
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalePolicy {
    /// Off: the service runs exactly `fixed_replicas`.
    pub enabled: bool,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Target utilization, in (0, 1].
    pub target_utilization: f64,
    pub refresh_period: Duration,
    pub scale_down_window: Duration,
    /// `numReplicas`, when the autoscaler is off.
    pub fixed_replicas: u32,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        AutoscalePolicy {
            enabled: true,
            min_replicas: defaults::AUTOSCALE_MIN_REPLICAS,
            max_replicas: defaults::AUTOSCALE_MAX_REPLICAS,
            target_utilization: defaults::AUTOSCALE_TARGET_UTILIZATION as f64 / 100.0,
            refresh_period: Duration::from_secs(defaults::AUTOSCALE_REFRESH_SECONDS as u64),
            scale_down_window: DEFAULT_SCALE_DOWN_WINDOW,
            fixed_replicas: 1,
        }
    }
}

impl AutoscalePolicy {
    /// The policy `deploymentconfig.json` describes. As on Azure, the autoscaler is on unless
    /// `autoscaleEnabled` is false or `numReplicas` is set, and a dev/test cluster
    /// (`dev_test_cluster`) runs a fixed number of replicas.
    pub fn from_deployment(
        config: &DeploymentConfig,
        dev_test_cluster: bool,
    ) -> Result<AutoscalePolicy, String> {
        let scaler = config.auto_scaler.clone().unwrap_or_default();
        let defaults = AutoscalePolicy::default();
        let enabled = !dev_test_cluster
            && scaler
                .autoscale_enabled
                .unwrap_or(config.num_replicas.is_none());
        let policy = AutoscalePolicy {
            enabled,
            min_replicas: scaler.min_replicas.unwrap_or(defaults.min_replicas),
            max_replicas: scaler.max_replicas.unwrap_or(defaults.max_replicas),
            target_utilization: scaler
                .target_utilization
                .map_or(defaults.target_utilization, |p| p as f64 / 100.0),
            refresh_period: scaler
                .refresh_period_in_seconds
                .map_or(defaults.refresh_period, |s| Duration::from_secs(s as u64)),
            scale_down_window: defaults.scale_down_window,
            fixed_replicas: config.num_replicas.unwrap_or(1),
        };
        policy.validate()?;
        Ok(policy)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.min_replicas == 0 || self.min_replicas > self.max_replicas {
            return Err(format!(
                "autoScaler: minReplicas ({}) must be at least 1 and at most maxReplicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return Err(format!(
                "autoScaler: targetUtilization must be between 1 and 100 (got {})",
                (self.target_utilization * 100.0).round()
            ));
        }
        if self.refresh_period.is_zero() {
            return Err("autoScaler: refreshPeriodInSeconds must be at least 1".into());
        }
        if self.fixed_replicas == 0 {
            return Err("numReplicas must be at least 1".into());
        }
        Ok(())
    }

    /// The replicas a service starts with: minReplicas, or numReplicas with the autoscaler off.
    pub fn initial_replicas(&self) -> u32 {
        if self.enabled {
            self.min_replicas
        } else {
            self.fixed_replicas
        }
    }

    /// The replicas Azure's formula asks for at `busy` busy replicas, within `[min, max]`.
    pub fn replicas_for(&self, busy: f64) -> u32 {
        let wanted = (busy.max(0.0) / self.target_utilization - 1e-9).ceil();
        (wanted.min(self.max_replicas as f64) as u32).clamp(self.min_replicas, self.max_replicas)
    }
}

/// One observation of a service: when (on any monotonic clock), and how many replicas' worth
/// of work was in progress or waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Duration,
    pub busy: f64,
}

/// How many replicas the service should have now, given the samples observed (oldest first;
/// the last is the latest) and the replicas it has.
///
/// - Utilization above the target: scale up at once to the formula's count for the latest
///   sample.
/// - Otherwise: scale down only to the largest count the formula asked for over the last
///   `scale_down_window`, and only once the samples cover that whole window.
/// - Always within `[min, max]`; with the autoscaler off, exactly `fixed_replicas`.
pub fn decide(policy: &AutoscalePolicy, samples: &[Sample], current: u32) -> u32 {
    if !policy.enabled {
        return policy.fixed_replicas;
    }
    let current_in_range = current.clamp(policy.min_replicas, policy.max_replicas);
    let Some(latest) = samples.last() else {
        return current_in_range;
    };
    let utilization = latest.busy / current.max(1) as f64;
    if utilization > policy.target_utilization {
        return policy.replicas_for(latest.busy).max(current_in_range);
    }
    // Before a whole window has been observed, nothing says load has stayed low.
    let Some(window_start) = latest.at.checked_sub(policy.scale_down_window) else {
        return current_in_range;
    };
    if samples.first().is_none_or(|first| first.at > window_start) {
        return current_in_range;
    }
    let highest_recent = samples
        .iter()
        .filter(|s| s.at >= window_start)
        .map(|s| policy.replicas_for(s.busy))
        .max()
        .unwrap_or(policy.min_replicas);
    highest_recent.min(current_in_range)
}

/// The samples still needed to decide at `now`: those inside the scale-down window, plus the
/// newest one before it (which proves the window is covered).
pub fn prune(samples: &mut Vec<Sample>, policy: &AutoscalePolicy, now: Duration) {
    let window_start = now.saturating_sub(policy.scale_down_window);
    let inside = samples.partition_point(|s| s.at < window_start);
    if inside > 1 {
        samples.drain(..inside - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelpod_scoring::deployment::AutoScaler;

    fn policy() -> AutoscalePolicy {
        AutoscalePolicy {
            min_replicas: 1,
            max_replicas: 10,
            ..AutoscalePolicy::default()
        }
    }

    /// Runs the autoscaler once per second of simulated time over `busy` (one value per
    /// second), starting from `replicas`, and returns the replica count after each second.
    fn simulate(policy: &AutoscalePolicy, busy: &[f64], mut replicas: u32) -> Vec<u32> {
        let mut samples = Vec::new();
        busy.iter()
            .enumerate()
            .map(|(second, &busy)| {
                let at = Duration::from_secs(second as u64);
                samples.push(Sample { at, busy });
                prune(&mut samples, policy, at);
                replicas = decide(policy, &samples, replicas);
                replicas
            })
            .collect()
    }

    #[test]
    fn azures_documented_formula() {
        // Azure's example: 10 concurrent requests, one per container, 70 % target → 15 replicas
        // (ceil(10 / (1 × 0.7))); with maxReplicas 10 that is 10.
        let wide = AutoscalePolicy {
            max_replicas: 100,
            ..policy()
        };
        assert_eq!(wide.replicas_for(10.0), 15);
        assert_eq!(policy().replicas_for(10.0), 10);
        // Exactly at the target needs no more: 7 busy at 70 % is 10 replicas, not 11.
        assert_eq!(wide.replicas_for(7.0), 10);
        assert_eq!(wide.replicas_for(0.0), 1);
        assert_eq!(wide.replicas_for(0.2), 1);
    }

    #[test]
    fn scales_up_at_once_and_down_only_after_the_window() {
        let policy = policy();
        // 2 quiet seconds, 5 busy replicas for 5 s, then quiet for 70 s.
        let mut busy = vec![0.0; 2];
        busy.extend([5.0; 5]);
        busy.extend([0.0; 70]);
        let replicas = simulate(&policy, &busy, 1);
        assert_eq!(replicas[1], 1);
        // The first busy second already asks for ceil(5 / 0.7) = 8.
        assert_eq!(replicas[2], 8);
        // Load ends at second 7; the last high recommendation (second 6) leaves the window
        // at second 67.
        assert!(replicas[7..67].iter().all(|&r| r == 8), "{replicas:?}");
        assert_eq!(replicas[67], 1);
        assert!(replicas.iter().all(|&r| (1..=10).contains(&r)));
    }

    #[test]
    fn holds_between_target_and_the_formula_and_steps_down_to_the_windows_peak() {
        let policy = policy();
        // 4 busy on 8 replicas is 50 %: below target, so no scale-up, and the formula (6) is
        // less than 8 only after a whole window of it.
        let replicas = simulate(&policy, &[4.0; 62], 8);
        assert_eq!(replicas[59], 8);
        assert_eq!(replicas[60], 6);
        // A dip inside the window does not count for less than the window's peak.
        let mut busy = vec![4.0; 30];
        busy.extend([0.0; 31]);
        let replicas = simulate(&policy, &busy, 8);
        assert_eq!(*replicas.last().unwrap(), 6);
    }

    #[test]
    fn never_leaves_min_and_max() {
        let policy = AutoscalePolicy {
            min_replicas: 2,
            max_replicas: 4,
            ..policy()
        };
        let mut busy = vec![50.0; 5];
        busy.extend([0.0; 100]);
        let replicas = simulate(&policy, &busy, 1);
        assert_eq!(replicas[0], 4);
        assert!(
            replicas.iter().all(|&r| (2..=4).contains(&r)),
            "{replicas:?}"
        );
        assert_eq!(*replicas.last().unwrap(), 2);
        // Started outside the range, it is brought inside at the first decision.
        assert_eq!(decide(&policy, &[], 9), 4);
    }

    #[test]
    fn off_means_num_replicas_and_dev_test_clusters_turn_it_off() {
        let config = DeploymentConfig {
            num_replicas: Some(3),
            ..Default::default()
        };
        let fixed = AutoscalePolicy::from_deployment(&config, false).unwrap();
        assert!(!fixed.enabled);
        assert_eq!(simulate(&fixed, &[100.0, 0.0], 1), [3, 3]);

        let config = DeploymentConfig {
            auto_scaler: Some(AutoScaler {
                autoscale_enabled: Some(true),
                min_replicas: Some(2),
                max_replicas: Some(6),
                refresh_period_in_seconds: Some(2),
                target_utilization: Some(50),
                ..Default::default()
            }),
            ..Default::default()
        };
        let on = AutoscalePolicy::from_deployment(&config, false).unwrap();
        assert!(on.enabled);
        assert_eq!((on.min_replicas, on.max_replicas), (2, 6));
        assert_eq!(on.target_utilization, 0.5);
        assert_eq!(on.refresh_period, Duration::from_secs(2));
        assert!(
            !AutoscalePolicy::from_deployment(&config, true)
                .unwrap()
                .enabled
        );

        // Azure's defaults when the file says nothing.
        let default =
            AutoscalePolicy::from_deployment(&DeploymentConfig::default(), false).unwrap();
        assert_eq!(default, AutoscalePolicy::default());
    }

    #[test]
    fn invalid_settings_are_refused_with_their_names() {
        let bad = |scaler: AutoScaler| {
            AutoscalePolicy::from_deployment(
                &DeploymentConfig {
                    auto_scaler: Some(scaler),
                    ..Default::default()
                },
                false,
            )
            .unwrap_err()
        };
        assert!(
            bad(AutoScaler {
                min_replicas: Some(5),
                max_replicas: Some(2),
                ..Default::default()
            })
            .contains("minReplicas")
        );
        assert!(
            bad(AutoScaler {
                target_utilization: Some(0),
                ..Default::default()
            })
            .contains("targetUtilization")
        );
    }
}

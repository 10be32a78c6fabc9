//! Making a metric and registering it in one step, so each subsystem's
//! metrics are declared as a list of names and helps.

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, core::Collector,
};

/// Registers what it makes in one registry.
pub(super) struct Reg<'a>(pub(super) &'a Registry);

type Made<T> = Result<T, prometheus::Error>;

impl Reg<'_> {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> Made<C> {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> Made<IntCounter> {
        self.add(IntCounter::new(name, help)?)
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> Made<Gauge> {
        self.add(Gauge::new(name, help)?)
    }

    pub(super) fn int_gauge(&self, name: &str, help: &str) -> Made<IntGauge> {
        self.add(IntGauge::new(name, help)?)
    }

    /// A labelled counter with every series in `zeroed` present from the
    /// start, at zero, so rates and alerts see the first event instead of a
    /// new series.
    pub(super) fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        zeroed: &[&[&str]],
    ) -> Made<IntCounterVec> {
        let c = self.add(IntCounterVec::new(Opts::new(name, help), labels)?)?;
        for values in zeroed {
            c.with_label_values(values);
        }
        Ok(c)
    }

    pub(super) fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> Made<GaugeVec> {
        self.add(GaugeVec::new(Opts::new(name, help), labels)?)
    }

    pub(super) fn int_gauges(&self, name: &str, help: &str, labels: &[&str]) -> Made<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    pub(super) fn histograms(&self, opts: HistogramOpts, labels: &[&str]) -> Made<HistogramVec> {
        self.add(HistogramVec::new(opts, labels)?)
    }

    /// A collector made elsewhere (read at scrape time).
    pub(super) fn collector<C: Collector + Clone + 'static>(&self, c: C) -> Made<C> {
        self.add(c)
    }
}

/// Each value of a one-label metric, as [`Reg::counters`] zeroes them.
pub(super) fn one_label<'a>(values: &'a [&'a str]) -> Vec<&'a [&'a str]> {
    values.iter().map(std::slice::from_ref).collect()
}

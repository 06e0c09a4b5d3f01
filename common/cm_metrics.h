/*
 * cm_metrics: a small Prometheus registry (counters, gauges, histograms with
 * labels) rendered in the text exposition format 0.0.4.
 *
 * Series are created on first use and live as long as the registry. Label
 * values must come from bounded sets (route names, status codes, error
 * kinds), never from client input.
 *
 * Thread-safe: one registry serves every worker thread of a process. A
 * mutex per registry guards the series (creation, update, render); an
 * update holds it for a list walk and an add. Metrics are created (the
 * cm_metrics_counter() & co. calls) before the threads start. A counter or
 * histogram is the sum of every thread's updates; a gauge holds the last
 * value set, so a gauge whose value is spread over threads is computed
 * (summed) by its owner before rendering.
 *
 * Ownership: the registry owns every metric; pointers returned by
 * cm_metrics_counter() & co. are borrowed and valid until cm_metrics_free().
 */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include <stddef.h>

struct cm_metrics;
struct cm_metric;
struct evbuffer;

struct cm_metrics *cm_metrics_new(void);
void cm_metrics_free(struct cm_metrics *m);

/* label_names: comma-separated ("route,status") or NULL; strings are copied. */
struct cm_metric *cm_metrics_counter(struct cm_metrics *m, const char *name, const char *help,
                                     const char *label_names);
struct cm_metric *cm_metrics_gauge(struct cm_metrics *m, const char *name, const char *help,
                                   const char *label_names);
/* buckets: ascending upper bounds (copied); +Inf is implicit. */
struct cm_metric *cm_metrics_histogram(struct cm_metrics *m, const char *name, const char *help,
                                       const char *label_names, const double *buckets,
                                       size_t nbuckets);

/* values: one string per label name, in order (NULL when no labels). */
void cm_metric_add(struct cm_metric *metric, const char *const *values, double v);
void cm_metric_set(struct cm_metric *metric, const char *const *values, double v);
void cm_metric_observe(struct cm_metric *metric, const char *const *values, double v);
/* Current value of a counter/gauge series (0 when absent); for tests. */
double cm_metric_value(struct cm_metric *metric, const char *const *values);

/* Appends the exposition text to out. */
void cm_metrics_render(struct cm_metrics *m, struct evbuffer *out);

#define CM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif

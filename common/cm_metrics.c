/* cm_metrics: Prometheus registry (see cm_metrics.h). */
#include "cm_metrics.h"

#include "cm_alloc.h"

#include <event2/buffer.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

struct series {
    struct series *next;
    char **values; /* nlabels strings */
    double value;  /* counter/gauge */
    double sum;    /* histogram */
    unsigned long long count;
    unsigned long long *bucket_counts; /* nbuckets (cumulative at render) */
};

struct cm_metric {
    struct cm_metric *next;
    struct cm_metrics *reg;
    enum metric_kind kind;
    char *name;
    char *help;
    char **labels;
    size_t nlabels;
    double *buckets;
    size_t nbuckets;
    struct series *series;
};

/* One mutex guards every series of the registry: updates are a few per
 * request and short (a list walk and an add), rendering is rare. */
struct cm_metrics {
    struct cm_metric *head, *tail;
    pthread_mutex_t mu;
};

struct cm_metrics *cm_metrics_new(void)
{
    struct cm_metrics *m = cm_xcalloc(1, sizeof(struct cm_metrics));
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void series_free(struct series *s, size_t nlabels)
{
    for (size_t i = 0; i < nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->bucket_counts);
    free(s);
}

void cm_metrics_free(struct cm_metrics *m)
{
    if (!m)
        return;
    struct cm_metric *mt = m->head;
    while (mt) {
        struct cm_metric *next = mt->next;
        struct series *s = mt->series;
        while (s) {
            struct series *sn = s->next;
            series_free(s, mt->nlabels);
            s = sn;
        }
        for (size_t i = 0; i < mt->nlabels; i++)
            free(mt->labels[i]);
        free(mt->labels);
        free(mt->buckets);
        free(mt->name);
        free(mt->help);
        free(mt);
        mt = next;
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static struct cm_metric *metric_new(struct cm_metrics *m, enum metric_kind kind, const char *name,
                                    const char *help, const char *label_names)
{
    struct cm_metric *mt = cm_xcalloc(1, sizeof *mt);
    mt->kind = kind;
    mt->reg = m;
    mt->name = cm_xstrdup(name);
    mt->help = cm_xstrdup(help);
    if (label_names && *label_names) {
        char *copy = cm_xstrdup(label_names);
        char *save = NULL;
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            mt->labels = cm_xrealloc(mt->labels, (mt->nlabels + 1) * sizeof(char *));
            mt->labels[mt->nlabels++] = cm_xstrdup(tok);
        }
        free(copy);
    }
    if (m->tail)
        m->tail->next = mt;
    else
        m->head = mt;
    m->tail = mt;
    return mt;
}

struct cm_metric *cm_metrics_counter(struct cm_metrics *m, const char *name, const char *help,
                                     const char *label_names)
{
    return metric_new(m, KIND_COUNTER, name, help, label_names);
}

struct cm_metric *cm_metrics_gauge(struct cm_metrics *m, const char *name, const char *help,
                                   const char *label_names)
{
    return metric_new(m, KIND_GAUGE, name, help, label_names);
}

struct cm_metric *cm_metrics_histogram(struct cm_metrics *m, const char *name, const char *help,
                                       const char *label_names, const double *buckets,
                                       size_t nbuckets)
{
    struct cm_metric *mt = metric_new(m, KIND_HISTOGRAM, name, help, label_names);
    mt->buckets = cm_xmalloc(nbuckets * sizeof(double));
    memcpy(mt->buckets, buckets, nbuckets * sizeof(double));
    mt->nbuckets = nbuckets;
    return mt;
}

static int series_matches(const struct cm_metric *mt, const struct series *s,
                          const char *const *values)
{
    for (size_t i = 0; i < mt->nlabels; i++)
        if (strcmp(s->values[i], values[i]) != 0)
            return 0;
    return 1;
}

/* Runs on every update (several per request): no allocation unless the
 * series is new. */
static struct series *series_get(struct cm_metric *mt, const char *const *values, int create)
{
    for (struct series *s = mt->series; s; s = s->next)
        if (series_matches(mt, s, values))
            return s;
    if (!create)
        return NULL;
    struct series *s = cm_xcalloc(1, sizeof *s);
    s->values = cm_xcalloc(mt->nlabels ? mt->nlabels : 1, sizeof(char *));
    for (size_t i = 0; i < mt->nlabels; i++)
        s->values[i] = cm_xstrdup(values[i]);
    if (mt->kind == KIND_HISTOGRAM)
        s->bucket_counts = cm_xcalloc(mt->nbuckets, sizeof(unsigned long long));
    /* Append to keep render order stable. */
    struct series **tail = &mt->series;
    while (*tail)
        tail = &(*tail)->next;
    *tail = s;
    return s;
}

void cm_metric_add(struct cm_metric *mt, const char *const *values, double v)
{
    pthread_mutex_lock(&mt->reg->mu);
    series_get(mt, values, 1)->value += v;
    pthread_mutex_unlock(&mt->reg->mu);
}

void cm_metric_set(struct cm_metric *mt, const char *const *values, double v)
{
    pthread_mutex_lock(&mt->reg->mu);
    series_get(mt, values, 1)->value = v;
    pthread_mutex_unlock(&mt->reg->mu);
}

double cm_metric_value(struct cm_metric *mt, const char *const *values)
{
    pthread_mutex_lock(&mt->reg->mu);
    struct series *s = series_get(mt, values, 0);
    double v = s ? s->value : 0;
    pthread_mutex_unlock(&mt->reg->mu);
    return v;
}

void cm_metric_observe(struct cm_metric *mt, const char *const *values, double v)
{
    pthread_mutex_lock(&mt->reg->mu);
    struct series *s = series_get(mt, values, 1);
    s->sum += v;
    s->count++;
    for (size_t i = 0; i < mt->nbuckets; i++) {
        if (v <= mt->buckets[i]) {
            s->bucket_counts[i]++;
            break;
        }
    }
    pthread_mutex_unlock(&mt->reg->mu);
}

static void render_labels(struct evbuffer *out, const struct cm_metric *mt, const struct series *s,
                          const char *extra_name, const char *extra_value)
{
    if (mt->nlabels == 0 && !extra_name)
        return;
    evbuffer_add(out, "{", 1);
    int first = 1;
    for (size_t i = 0; i < mt->nlabels; i++) {
        evbuffer_add_printf(out, "%s%s=\"", first ? "" : ",", mt->labels[i]);
        for (const char *p = s->values[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                evbuffer_add_printf(out, "\\%c", *p);
            else if (*p == '\n')
                evbuffer_add(out, "\\n", 2);
            else
                evbuffer_add(out, p, 1);
        }
        evbuffer_add(out, "\"", 1);
        first = 0;
    }
    if (extra_name)
        evbuffer_add_printf(out, "%s%s=\"%s\"", first ? "" : ",", extra_name, extra_value);
    evbuffer_add(out, "}", 1);
}

static void render_number(struct evbuffer *out, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        evbuffer_add_printf(out, " %.0f\n", v);
    else
        evbuffer_add_printf(out, " %.9g\n", v);
}

void cm_metrics_render(struct cm_metrics *m, struct evbuffer *out)
{
    static const char *const kind_names[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&m->mu);
    for (struct cm_metric *mt = m->head; mt; mt = mt->next) {
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", mt->name, mt->help, mt->name,
                            kind_names[mt->kind]);
        for (struct series *s = mt->series; s; s = s->next) {
            if (mt->kind != KIND_HISTOGRAM) {
                evbuffer_add_printf(out, "%s", mt->name);
                render_labels(out, mt, s, NULL, NULL);
                render_number(out, s->value);
                continue;
            }
            unsigned long long cum = 0;
            char le[32];
            for (size_t i = 0; i < mt->nbuckets; i++) {
                cum += s->bucket_counts[i];
                snprintf(le, sizeof le, "%g", mt->buckets[i]);
                evbuffer_add_printf(out, "%s_bucket", mt->name);
                render_labels(out, mt, s, "le", le);
                render_number(out, (double)cum);
            }
            evbuffer_add_printf(out, "%s_bucket", mt->name);
            render_labels(out, mt, s, "le", "+Inf");
            render_number(out, (double)s->count);
            evbuffer_add_printf(out, "%s_sum", mt->name);
            render_labels(out, mt, s, NULL, NULL);
            render_number(out, s->sum);
            evbuffer_add_printf(out, "%s_count", mt->name);
            render_labels(out, mt, s, NULL, NULL);
            render_number(out, (double)s->count);
        }
    }
    pthread_mutex_unlock(&m->mu);
}

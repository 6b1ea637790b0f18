"""GX map metrics (pandas) behind the custom expectations in :mod:`data_contracts.expectations`.

Importing this module imports GX and registers the metrics. Each returns, per row, whether the
value meets the rule (GX derives the unexpected rows, values and counts from it); the value
tests themselves are in :mod:`data_contracts.gx_values`. GX drops nulls before a column metric
runs, except for the type metrics (``filter_column_isnull = False``): a null is not of the type.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.metrics import ColumnAggregateMetricProvider, column_aggregate_value
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    MulticolumnMapMetricProvider,
    column_condition_partial,
    multicolumn_condition_partial,
)

from data_contracts.gx_values import (SURROGATE, UnencodableText, aware, between, has_visible, hashable,
                                      is_number, missing, on_strings, probability_matrix)
from data_contracts.redaction import find_pii

_MULTICOLUMN_DOMAIN = ("batch_id", "table", "column_list", "row_condition", "condition_parser", "ignore_row_if")


class ColumnValuesValidUtf8(ColumnMapMetricProvider):
    condition_metric_name = "column_values.valid_utf8"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        if isinstance(column.dtype, pd.StringDtype):  # Arrow strings cannot hold lone surrogates
            return pd.Series(True, index=column.index)
        return on_strings(column, lambda s: type(s) is not UnencodableText and SURROGATE.search(s) is None)


class ColumnStringsMatchRegex(ColumnMapMetricProvider):
    condition_metric_name = "column_strings.match_regex"
    condition_value_keys = ("regex",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, regex, **kwargs):
        rx = re.compile(regex)
        return on_strings(column, lambda s: rx.search(s) is not None)


class ColumnStringsNotMatchRegex(ColumnMapMetricProvider):
    condition_metric_name = "column_strings.not_match_regex"
    condition_value_keys = ("regex",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, regex, **kwargs):
        rx = re.compile(regex)
        return on_strings(column, lambda s: rx.search(s) is None)


class ColumnStringLengthsBetween(ColumnMapMetricProvider):
    condition_metric_name = "column_strings.length_between"
    condition_value_keys = ("min_value", "max_value", "strict_min", "strict_max")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, min_value=None, max_value=None, strict_min=False, strict_max=False, **kwargs):
        lo, hi = -math.inf if min_value is None else min_value, math.inf if max_value is None else max_value
        return on_strings(column, lambda s: (lo < len(s) if strict_min else lo <= len(s))
                           and (len(s) < hi if strict_max else len(s) <= hi))


class ColumnValuesVisibleCharacters(ColumnMapMetricProvider):
    condition_metric_name = "column_values.visible_characters"
    condition_value_keys = ("min_value",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, min_value=1, **kwargs):
        return on_strings(column, lambda s: has_visible(s, int(min_value)))


class ColumnValuesFirstOccurrence(ColumnMapMetricProvider):
    condition_metric_name = "column_values.first_occurrence"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        try:
            return ~column.duplicated(keep="first")
        except TypeError:  # unhashable values (lists, dicts) in a hostile frame
            return ~column.map(hashable).duplicated(keep="first")


class CompoundColumnsFirstOccurrence(MulticolumnMapMetricProvider):
    condition_metric_name = "compound_columns.first_occurrence"
    condition_domain_keys = _MULTICOLUMN_DOMAIN

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        try:  # equal instants in different time zones are equal (and hash equal) already
            return ~column_list.duplicated(keep="first")
        except TypeError:  # unhashable values (lists, dicts) in a hostile frame
            keys = {c: column_list[c].astype(object).map(hashable) for c in column_list.columns}
            return ~pd.DataFrame(keys, index=column_list.index).duplicated(keep="first")


class _TypeMetric(ColumnMapMetricProvider):
    """A type rule: nulls reach the metric (and fail it), unlike other column metrics."""

    filter_column_isnull = False


class ColumnValuesStrings(_TypeMetric):
    condition_metric_name = "column_values.string"
    condition_value_keys = ("non_empty",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, non_empty=False, **kwargs):
        values = column.to_numpy(dtype=object)
        if non_empty:
            return pd.Series([isinstance(v, str) and bool(v.strip()) for v in values], index=column.index, dtype=bool)
        return pd.Series([isinstance(v, str) for v in values], index=column.index, dtype=bool)


class ColumnValuesBooleans(_TypeMetric):
    condition_metric_name = "column_values.boolean"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        if column.dtype == bool:
            return pd.Series(True, index=column.index)
        return pd.Series([isinstance(v, (bool, np.bool_)) for v in column.to_numpy(dtype=object)],
                         index=column.index, dtype=bool)


class ColumnValuesNumbers(_TypeMetric):
    condition_metric_name = "column_values.real_number"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        if column.dtype.kind in "iuf":
            return column.notna()
        return pd.Series([is_number(v) and not missing(v) for v in column.to_numpy(dtype=object)],
                         index=column.index, dtype=bool)


class ColumnValuesAwareTimestamps(_TypeMetric):
    condition_metric_name = "column_values.aware_timestamp"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            return column.notna()
        return pd.Series([aware(v) for v in column.to_numpy(dtype=object)], index=column.index, dtype=bool)


class ColumnValuesProbabilityVector(_TypeMetric):
    condition_metric_name = "column_values.probability_vector"
    condition_value_keys = ("length",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, length, **kwargs):
        return pd.Series(probability_matrix(column, int(length))[0], index=column.index)


class ColumnNumbersBetween(ColumnMapMetricProvider):
    condition_metric_name = "column_numbers.between"
    condition_value_keys = ("min_value", "max_value", "strict_min", "strict_max")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, min_value=None, max_value=None, strict_min=False, strict_max=False, **kwargs):
        if column.dtype.kind in "iuf":  # vectorised: the usual case
            ok = pd.Series(True, index=column.index)
            if min_value is not None:
                ok &= column > min_value if strict_min else column >= min_value
            if max_value is not None:
                ok &= column < max_value if strict_max else column <= max_value
            return ok
        values = column.to_numpy(dtype=object)
        numbers = np.array([is_number(v) for v in values], dtype=bool)
        result = np.ones(len(values), dtype=bool)
        result[numbers] = between(list(values[numbers]), min_value, max_value, strict_min, strict_max)
        return pd.Series(result, index=column.index)


class ColumnTimestampsBetween(ColumnMapMetricProvider):
    condition_metric_name = "column_timestamps.between"
    condition_value_keys = ("min_value", "max_value", "strict_min", "strict_max")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, min_value=None, max_value=None, strict_min=False, strict_max=False, **kwargs):
        if isinstance(column.dtype, pd.DatetimeTZDtype):  # vectorised: the usual case
            ok = pd.Series(True, index=column.index)
            if min_value is not None:
                ok &= column > min_value if strict_min else column >= min_value
            if max_value is not None:
                ok &= column < max_value if strict_max else column <= max_value
            return ok
        values = column.to_numpy(dtype=object)
        is_aware = np.array([aware(v) for v in values], dtype=bool)
        result = np.ones(len(values), dtype=bool)
        result[is_aware] = between([pd.Timestamp(v) for v in values[is_aware]], min_value, max_value,
                                 strict_min, strict_max)
        return pd.Series(result, index=column.index)


class ColumnVectorSumsBetween(ColumnMapMetricProvider):
    condition_metric_name = "column_values.vector_sum_between"
    condition_value_keys = ("length", "min_value", "max_value")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, length, min_value, max_value, **kwargs):
        ok, matrix = probability_matrix(column, int(length))
        sums = matrix.sum(axis=1)
        return pd.Series(~ok | ((sums >= min_value) & (sums <= max_value)), index=column.index)


class ColumnValuesArgmaxOf(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.label_is_argmax"
    condition_domain_keys = _MULTICOLUMN_DOMAIN
    condition_value_keys = ("labels",)

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, labels, **kwargs):
        label_col, probs_col = column_list.columns[:2]
        index = {lab: i for i, lab in enumerate(labels)}
        ok, matrix = probability_matrix(column_list[probs_col], len(labels))
        label_values = column_list[label_col].to_numpy(dtype=object)
        pos = np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in label_values], dtype=int)
        judged = ok & (pos >= 0)
        result = np.ones(len(pos), dtype=bool)
        rows = np.flatnonzero(judged)
        result[rows] = matrix[rows, pos[rows]] >= matrix[rows].max(axis=1) - 1e-9
        return pd.Series(result, index=column_list.index)


class CorrectionsOnRejectedPredictions(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.correction_on_rejection"
    condition_domain_keys = _MULTICOLUMN_DOMAIN

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        accepted, predicted, corrected = (column_list[c].to_numpy(dtype=object) for c in column_list.columns[:3])
        out = [True if missing(corr) or not isinstance(acc, (bool, np.bool_))
               else (not acc and corr != pred) for acc, pred, corr in zip(accepted, predicted, corrected)]
        return pd.Series(out, index=column_list.index, dtype=bool)


class ColumnValuesNoPii(ColumnMapMetricProvider):
    condition_metric_name = "column_values.no_pii"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        return on_strings(column, lambda s: not find_pii(s))


class ColumnTotalVariationDistance(ColumnAggregateMetricProvider):
    """Total variation distance (0..1) between the column's value frequencies and ``reference``
    (value -> probability); values outside ``reference`` count as mass the reference lacks."""

    metric_name = "column.total_variation_distance"
    value_keys = ("reference",)

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column, reference, **kwargs):
        observed = column.value_counts(normalize=True).to_dict()
        keys = set(observed) | set(reference)
        return 0.5 * sum(abs(float(observed.get(k, 0.0)) - float(reference.get(k, 0.0))) for k in keys)

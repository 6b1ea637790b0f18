"""Custom Great Expectations (1.x) expectations for the data contracts.

Importing this module imports GX and registers the expectations and their metrics
(:mod:`data_contracts.gx_metrics`); :mod:`data_contracts.gx_engine` imports it lazily. Each
expectation asks one question of one value (or of one row of a few columns), so a GX result reads
as the rule: ``expect_column_values_to_be_valid_utf8(column="text")``.

Values of other types pass a rule that is not about them (type rules catch those). The
``Strings``/``Numbers``/``Timestamps`` variants of built-ins keep the
built-in's parameters and Data Docs rendering but skip such values: the built-ins cast with
``astype(str)`` (pandas 3 makes that pyarrow strings, which refuse lone surrogates) or compare
mixed types, and would fail for the whole batch instead of for one row.
"""

from __future__ import annotations

from typing import Dict, List, Union

from great_expectations.core.metric_function_types import SummarizationMetricNameSuffixes
from great_expectations.core.suite_parameters import SuiteParameterDict
from great_expectations.expectations.core.expect_column_value_lengths_to_be_between import (
    ExpectColumnValueLengthsToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_between import (
    ExpectColumnValuesToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_match_regex import (
    ExpectColumnValuesToMatchRegex,
)
from great_expectations.expectations.core.expect_column_values_to_not_match_regex import (
    ExpectColumnValuesToNotMatchRegex,
)
from great_expectations.expectations.expectation import (ColumnAggregateExpectation, ColumnMapExpectation,
                                                         MulticolumnMapExpectation, _format_map_output)
from great_expectations.expectations.expectation_configuration import parse_result_format

import data_contracts.gx_metrics  # noqa: F401  - registers the metrics these expectations use

Param = Union[int, float, SuiteParameterDict]


class _TypeExpectation(ColumnMapExpectation):
    """A type rule in one expectation: a null is not of the type, so it is unexpected too.

    (The built-ins need two expectations for this, ``expect_column_values_to_not_be_null`` and
    ``expect_column_values_to_be_of_type``; GX's overhead is per expectation, whatever the rows.)
    """

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
        result_format = parse_result_format(self._get_result_format(runtime_configuration=runtime_configuration))
        total = metrics.get("table.row_count") or 0
        prefix = f"{self.map_metric}."
        unexpected = metrics.get(prefix + SummarizationMetricNameSuffixes.UNEXPECTED_COUNT.value) or 0
        mostly = self._get_success_kwargs().get("mostly")
        return _format_map_output(
            result_format=result_format, success=total == 0 or (total - unexpected) / total >= mostly,
            element_count=total, nonnull_count=None, unexpected_count=unexpected,
            unexpected_list=metrics.get(prefix + SummarizationMetricNameSuffixes.UNEXPECTED_VALUES.value),
            unexpected_index_list=metrics.get(prefix + SummarizationMetricNameSuffixes.UNEXPECTED_INDEX_LIST.value),
            unexpected_index_query=metrics.get(prefix + SummarizationMetricNameSuffixes.UNEXPECTED_INDEX_QUERY.value),
            unexpected_index_column_names=result_format.get("unexpected_index_column_names"),
            unexpected_rows=None)


class ExpectColumnValuesToBeStrings(_TypeExpectation):
    """Values must be strings (with ``non_empty``: not empty or whitespace only)."""

    non_empty: Union[bool, SuiteParameterDict] = False
    map_metric = "column_values.string"
    success_keys = ("non_empty", "mostly")


class ExpectColumnValuesToBeBooleans(_TypeExpectation):
    """Values must be ``True`` or ``False`` (numpy booleans too); not 0/1, not "yes"."""

    map_metric = "column_values.boolean"


class ExpectColumnValuesToBeValidUtf8(ColumnMapExpectation):
    """Strings must be encodable as UTF-8: no lone surrogates (what ``json.loads`` makes of a bad ``\\ud800``)."""

    map_metric = "column_values.valid_utf8"


class ExpectColumnStringsToMatchRegex(ExpectColumnValuesToMatchRegex):
    """Like the built-in for string values (``re.search``); other values are the type rule's concern."""

    map_metric = "column_strings.match_regex"


class ExpectColumnStringsToNotMatchRegex(ExpectColumnValuesToNotMatchRegex):
    """Like the built-in for string values (``re.search``); other values are the type rule's concern."""

    map_metric = "column_strings.not_match_regex"


class ExpectColumnStringLengthsToBeBetween(ExpectColumnValueLengthsToBeBetween):
    """Like the built-in, in characters, for string values only."""

    map_metric = "column_strings.length_between"


class ExpectColumnValuesToHaveVisibleCharacters(ColumnMapExpectation):
    """Strings must hold at least ``min_value`` characters that are not whitespace or zero-width."""

    min_value: Param = 1
    map_metric = "column_values.visible_characters"
    success_keys = ("min_value", "mostly")


class ExpectColumnValuesToBeFirstOccurrence(ColumnMapExpectation):
    """No value may repeat an earlier row's value: the first of duplicates is kept, later ones fail.

    (The built-in ``expect_column_values_to_be_unique`` fails every copy, the first one included.)
    """

    map_metric = "column_values.first_occurrence"


class ExpectCompoundColumnsToBeFirstOccurrence(MulticolumnMapExpectation):
    """Like :class:`ExpectColumnValuesToBeFirstOccurrence` for a key of several columns (times by instant)."""

    ignore_row_if: str = "any_value_is_missing"
    map_metric = "compound_columns.first_occurrence"


class ExpectColumnValuesToBeRealNumbers(_TypeExpectation):
    """Values must be int or float numbers (numpy ones too), not NaN; booleans are not numbers."""

    map_metric = "column_values.real_number"


class ExpectColumnNumbersToBeBetween(ExpectColumnValuesToBeBetween):
    """Like the built-in for numbers; other values are the type rule's concern."""

    map_metric = "column_numbers.between"


class ExpectColumnValuesToBeAwareTimestamps(_TypeExpectation):
    """Values must be timezone-aware timestamps (pandas or ``datetime``); a naive time is ambiguous."""

    map_metric = "column_values.aware_timestamp"


class ExpectColumnTimestampsToBeBetween(ExpectColumnValuesToBeBetween):
    """Timezone-aware timestamps compared as instants; other values are the type rule's concern."""

    map_metric = "column_timestamps.between"


class ExpectColumnValuesToBeProbabilityVectors(_TypeExpectation):
    """Values must be ``length`` finite numbers in [0, 1] (a list or array)."""

    length: Param
    map_metric = "column_values.probability_vector"
    success_keys = ("length", "mostly")


class ExpectColumnVectorSumsToBeBetween(ColumnMapExpectation):
    """Probability vectors (see above) must sum to a value in [min_value, max_value]."""

    length: Param
    min_value: Param
    max_value: Param
    map_metric = "column_values.vector_sum_between"
    success_keys = ("length", "min_value", "max_value", "mostly")


class ExpectMulticolumnLabelToBeArgmax(MulticolumnMapExpectation):
    """In ``column_list = [label, probs]`` the label must have the highest probability, ``probs`` ordered like
    ``labels``. Rows whose label or probs are invalid are left to the rules for those columns."""

    labels: Union[List[str], SuiteParameterDict]
    ignore_row_if: str = "any_value_is_missing"
    map_metric = "multicolumn_values.label_is_argmax"
    success_keys = ("labels", "mostly")


class ExpectCorrectionsOnlyOnRejectedPredictions(MulticolumnMapExpectation):
    """In ``column_list = [accepted, predicted, corrected_label]`` a correction may only follow a rejected
    prediction (``accepted`` false) and must differ from it. Rows with no correction pass."""

    ignore_row_if: str = "never"
    map_metric = "multicolumn_values.correction_on_rejection"


class ExpectColumnValuesToContainNoPii(ColumnMapExpectation):
    """Strings must hold no personal data that :func:`data_contracts.redaction.find_pii` detects
    (e-mail, phone, Luhn-valid card, mod-97-valid IBAN, street address, order/invoice/tracking number)."""

    map_metric = "column_values.no_pii"


class ExpectColumnTotalVariationDistanceToBeAtMost(ColumnAggregateExpectation):
    """The column's value frequencies must be within ``max_value`` total variation distance (0..1) of
    ``reference`` (value -> probability): the label drift of a batch from the seed's label mix."""

    reference: Union[Dict[str, float], SuiteParameterDict]
    max_value: Param
    metric_dependencies = ("column.total_variation_distance",)
    success_keys = ("reference", "max_value")

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
        distance = metrics.get("column.total_variation_distance")
        limit = self._get_success_kwargs()["max_value"]
        return {"success": distance is not None and distance <= limit, "result": {"observed_value": distance}}

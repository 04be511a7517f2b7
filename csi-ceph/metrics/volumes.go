package metrics

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	mappedDesc = prometheus.NewDesc("csi_ceph_mapped_volumes",
		"Volumes staged on this node, by how they are mapped or mounted (krbd, rbd-nbd, rbd-fuse; kernel, ceph-fuse).",
		[]string{"driver", "mapper"}, nil)
	conditionDesc = prometheus.NewDesc("csi_ceph_volume_condition",
		"Volumes staged on this node, by the condition the last check found them in (normal, abnormal; unknown: not checked since the plugin started).",
		[]string{"driver", "condition"}, nil)
)

// volumeCollector counts the staged volumes at scrape time. Every mapper
// and condition is exported, at 0 when no volume has it, so that a query
// tells "none" from "not scraped".
type volumeCollector struct {
	driver  string
	mappers []string
	list    func() ([]Volume, error)
}

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- mappedDesc
	ch <- conditionDesc
}

func (c *volumeCollector) Collect(ch chan<- prometheus.Metric) {
	vols, err := c.list()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(mappedDesc, err)
		ch <- prometheus.NewInvalidMetric(conditionDesc, err)
		return
	}
	byMapper := map[string]int{}
	byCondition := map[string]int{}
	for _, v := range vols {
		m := v.Mapper
		if !slices.Contains(c.mappers, m) {
			m = MapperOther
		}
		byMapper[m]++
		cond := v.Condition
		if !slices.Contains(Conditions, cond) {
			cond = ConditionUnknown
		}
		byCondition[cond]++
	}
	for _, m := range c.mappers {
		ch <- prometheus.MustNewConstMetric(mappedDesc, prometheus.GaugeValue, float64(byMapper[m]), c.driver, m)
	}
	if n := byMapper[MapperOther]; n > 0 {
		ch <- prometheus.MustNewConstMetric(mappedDesc, prometheus.GaugeValue, float64(n), c.driver, MapperOther)
	}
	for _, cond := range Conditions {
		ch <- prometheus.MustNewConstMetric(conditionDesc, prometheus.GaugeValue, float64(byCondition[cond]), c.driver, cond)
	}
}

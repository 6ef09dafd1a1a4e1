//! sluice-roofline: where the time of a forward step goes, against the physical floor.

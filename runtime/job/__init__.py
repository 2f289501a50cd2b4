"""Jobs on real schedulers (Monarch's ``monarch.job``): being built for issue 12 section 5."""

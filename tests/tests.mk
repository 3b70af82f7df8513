# SPDX-License-Identifier: MIT
# Included from Makefile.am: the Check test programs, one per area.

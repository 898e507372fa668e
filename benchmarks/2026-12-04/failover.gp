# Leader kills under load, 3 oracles; written by nodepool bench --plot.
set terminal pngcairo size 1100,480 noenhanced
set output 'failover.png'
set title sprintf('nodepool failover: %d leader SIGKILLs, first grant after a median %.0f ms', 20, 232)
set grid
set xlabel 'seconds since the start'
set ylabel 'sessions started per second'
set yrange [0:*]
set key outside bottom center horizontal
set arrow from 1.419, graph 0 to 1.419, graph 1 nohead lc rgb '#d62728'
set arrow from 3.069, graph 0 to 3.069, graph 1 nohead lc rgb '#d62728'
set arrow from 5.175, graph 0 to 5.175, graph 1 nohead lc rgb '#d62728'
set arrow from 6.822, graph 0 to 6.822, graph 1 nohead lc rgb '#d62728'
set arrow from 9.307, graph 0 to 9.307, graph 1 nohead lc rgb '#d62728'
set arrow from 11.196, graph 0 to 11.196, graph 1 nohead lc rgb '#d62728'
set arrow from 13.254, graph 0 to 13.254, graph 1 nohead lc rgb '#d62728'
set arrow from 15.959, graph 0 to 15.959, graph 1 nohead lc rgb '#d62728'
set arrow from 17.82, graph 0 to 17.82, graph 1 nohead lc rgb '#d62728'
set arrow from 19.716, graph 0 to 19.716, graph 1 nohead lc rgb '#d62728'
set arrow from 22.175, graph 0 to 22.175, graph 1 nohead lc rgb '#d62728'
set arrow from 23.979, graph 0 to 23.979, graph 1 nohead lc rgb '#d62728'
set arrow from 25.745, graph 0 to 25.745, graph 1 nohead lc rgb '#d62728'
set arrow from 28.298, graph 0 to 28.298, graph 1 nohead lc rgb '#d62728'
set arrow from 30.1, graph 0 to 30.1, graph 1 nohead lc rgb '#d62728'
set arrow from 32.1, graph 0 to 32.1, graph 1 nohead lc rgb '#d62728'
set arrow from 34.115, graph 0 to 34.115, graph 1 nohead lc rgb '#d62728'
set arrow from 35.743, graph 0 to 35.743, graph 1 nohead lc rgb '#d62728'
set arrow from 37.608, graph 0 to 37.608, graph 1 nohead lc rgb '#d62728'
set arrow from 39.36, graph 0 to 39.36, graph 1 nohead lc rgb '#d62728'
plot 'failover_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' title 'grants/s (red: a leader SIGKILLed)', \
     'failover_kills.dat' using ($3 >= 0 ? $3 : NaN):(0) with points pt 7 ps 1.2 lc rgb '#2ca02c' title 'first grant of the new leader'

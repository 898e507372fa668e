# Leader kills under load, 3 oracles; written by nodepool bench --plot.
set terminal pngcairo size 1100,480 noenhanced
set output 'failover.png'
set title sprintf('nodepool failover: %d leader SIGKILLs, first grant after a median %.0f ms', 20, 254)
set grid
set xlabel 'seconds since the start'
set ylabel 'sessions started per second'
set yrange [0:*]
set key outside bottom center horizontal
set arrow from 1.633, graph 0 to 1.633, graph 1 nohead lc rgb '#d62728'
set arrow from 2.831, graph 0 to 2.831, graph 1 nohead lc rgb '#d62728'
set arrow from 4.129, graph 0 to 4.129, graph 1 nohead lc rgb '#d62728'
set arrow from 5.507, graph 0 to 5.507, graph 1 nohead lc rgb '#d62728'
set arrow from 6.827, graph 0 to 6.827, graph 1 nohead lc rgb '#d62728'
set arrow from 8.047, graph 0 to 8.047, graph 1 nohead lc rgb '#d62728'
set arrow from 9.41, graph 0 to 9.41, graph 1 nohead lc rgb '#d62728'
set arrow from 10.79, graph 0 to 10.79, graph 1 nohead lc rgb '#d62728'
set arrow from 12.552, graph 0 to 12.552, graph 1 nohead lc rgb '#d62728'
set arrow from 13.769, graph 0 to 13.769, graph 1 nohead lc rgb '#d62728'
set arrow from 15.145, graph 0 to 15.145, graph 1 nohead lc rgb '#d62728'
set arrow from 16.364, graph 0 to 16.364, graph 1 nohead lc rgb '#d62728'
set arrow from 17.655, graph 0 to 17.655, graph 1 nohead lc rgb '#d62728'
set arrow from 19.033, graph 0 to 19.033, graph 1 nohead lc rgb '#d62728'
set arrow from 20.326, graph 0 to 20.326, graph 1 nohead lc rgb '#d62728'
set arrow from 21.705, graph 0 to 21.705, graph 1 nohead lc rgb '#d62728'
set arrow from 23.094, graph 0 to 23.094, graph 1 nohead lc rgb '#d62728'
set arrow from 24.319, graph 0 to 24.319, graph 1 nohead lc rgb '#d62728'
set arrow from 25.7, graph 0 to 25.7, graph 1 nohead lc rgb '#d62728'
set arrow from 27.762, graph 0 to 27.762, graph 1 nohead lc rgb '#d62728'
plot 'failover_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' title 'grants/s (red: a leader SIGKILLed)', \
     'failover_kills.dat' using ($3 >= 0 ? $3 : NaN):(0) with points pt 7 ps 1.2 lc rgb '#2ca02c' title 'first grant of the new leader'
